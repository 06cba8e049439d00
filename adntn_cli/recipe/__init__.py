"""Recipes: the schema, loading with precise errors, and layer selection. No torch here."""

from .load import json_schema, load_recipe, parse_recipe, shipped_recipes
from .schema import Recipe
from .select import Candidate, select_layers

__all__ = [
    "Candidate",
    "Recipe",
    "json_schema",
    "load_recipe",
    "parse_recipe",
    "select_layers",
    "shipped_recipes",
]
