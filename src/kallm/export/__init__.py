"""Exporting a retrofit as a Hugging Face model folder that loads without kallm.

| module | concept |
| --- | --- |
| `pretrained` | `export_pretrained`: merge, save, verify against the in-memory model |
| `bundle` | copy the module closure of `portable` into the folder (only `from kallm.x import` lines rewritten) |
| `portable` | the code an export ships: the model class wrapper that rebuilds the FFNs from config.json |
| `model_card` | README.md of an export: what was replaced, how it was trained, how it scored |
"""
