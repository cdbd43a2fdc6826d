"""Import checkpoints of the PyTorch reference implementation (`hmsa convert`).

torch is needed only to read .pth files (`pip install hmsa_jax[convert]`); reading a converted
checkpoint back (`restore_converted`) needs only orbax.
"""
from hmsa_jax.convert.checkpoint_io import restore_converted, save_converted
from hmsa_jax.convert.mapping import ConversionError, ConversionReport, convert_state_dict
from hmsa_jax.convert.torch_reader import CheckpointReadError, TorchNotInstalledError, read_state_dict

__all__ = ["convert_state_dict", "ConversionReport", "ConversionError", "read_state_dict",
           "CheckpointReadError", "TorchNotInstalledError", "save_converted", "restore_converted"]
