"""Temporal workflows, activities and workers. Workflow modules import nothing that does I/O."""
