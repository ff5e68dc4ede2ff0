"""Data: loading every supported source, formats, templates, masking and packing."""
