"""Weights I/O, below every model: read torch or converted safetensors, map them strictly onto an NNX module.

`state`: file formats, layout rules (Linear/Conv transposes, torch `a.0.b` -> NNX paths), strict mapping.
`loading`: find a component's folder in a snapshot and build the module from its weights.
"""

from litefocus_jax.utils.io import (  # re-exported for 0.1 imports; moved to utils.io
    atomic_file,
    atomic_output_dir,
)
from litefocus_jax.weights.loading import convert_state, load_module, resolve_component
from litefocus_jax.weights.state import (
    CONVERTED_WEIGHTS,
    ConversionError,
    Path_,
    abstract_params,
    cast_tree,
    find_weights,
    map_converted_state,
    map_torch_state,
    parse_path,
    path_str,
    read_config,
    read_safetensors,
    read_weights,
    save_converted,
)

__all__ = [
    "CONVERTED_WEIGHTS",
    "ConversionError",
    "Path_",
    "abstract_params",
    "atomic_file",
    "atomic_output_dir",
    "cast_tree",
    "convert_state",
    "find_weights",
    "load_module",
    "map_converted_state",
    "map_torch_state",
    "parse_path",
    "path_str",
    "read_config",
    "read_safetensors",
    "read_weights",
    "resolve_component",
    "save_converted",
]
