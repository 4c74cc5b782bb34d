"""The models this Triton deployment serves; each module's `bind(triton)` loads its model and binds it."""
