# adntn on a CUDA box. torch and torchvision come with the base image and satisfy the project's
# pins, so installing adntn keeps them (no second, 5 GB torch download). The onnx extra comes
# too (adntn export --onnx needs torch >= 2.6, which this base has).
#   docker build -t adntn .
#   docker run --gpus all --shm-size 8g -v "$PWD/data:/data" -v "$PWD/runs:/runs" adntn \
#       compress /data/teacher.pt --arch vgg16 --recipe vgg16 --data imagefolder:/data/imagenet
ARG BASE=pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/adntn
COPY pyproject.toml README.md ./
COPY adntn_cli ./adntn_cli
COPY recipes ./recipes
RUN python -m pip install --no-cache-dir ".[onnx]" \
    && python -c "import torch, torchvision, adntn_cli, onnxruntime; print('torch', torch.__version__)" \
    && adntn --version

RUN useradd --create-home --uid 1000 adntn \
    && mkdir -p /data /runs \
    && chown adntn:adntn /data /runs
USER adntn
WORKDIR /runs
VOLUME ["/data", "/runs"]

ENTRYPOINT ["adntn"]
CMD ["--help"]
