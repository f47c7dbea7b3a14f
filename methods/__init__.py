"""Built-in attribution methods, one file each; each registers itself with ``@register_method``."""
