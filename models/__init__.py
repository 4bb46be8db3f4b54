"""Model recipes shipped with infer (installed as the package infer.recipes)."""
