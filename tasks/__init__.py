"""Built-in tasks, one file each; each registers itself with ``@register_task``."""
