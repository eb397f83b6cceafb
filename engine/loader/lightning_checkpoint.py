"""Read the tensors of a Lightning checkpoint whose hyper-parameters hold OmegaConf objects, running no code.

Why. pytorch-segmentation-models-trainer's ``Model`` calls ``save_hyperparameters``, so its ``.ckpt`` files carry
``hyper_parameters = {"cfg": DictConfig(...), ...}``. ``torch.load(weights_only=True)`` refuses them: a
``DictConfig`` is a Python class, and unpickling it the ordinary way would import omegaconf and call its
``__setstate__``. Yet these files are the checkpoints users have.

How. The file goes through torch's own restricted ``weights_only`` unpickler (tensors, storages and containers
only, no ``__reduce__`` of anything else), with a short list of extra names allowed, each mapped to an inert
stand-in class of this module, never to the real class:

- ``omegaconf.*`` containers, nodes and metadata (``DictConfig``, ``ListConfig``, ``AnyNode``, ``StringNode``,
  ``ContainerMetadata``, ...) become :class:`PickledObject`, which only stores the arguments and the state it
  is given (plain dicts, lists, strings, numbers);
- ``typing.Any``, ``builtins.object``, ``pathlib`` paths, ``argparse.Namespace`` and ``enum`` members that
  the same containers carry are stand-ins too; ``collections.defaultdict`` becomes a plain dict; the
  constructors ``dict``, ``list``, ``tuple``, ``str``, ``int``, ``float``, ``bool``, ``bytes`` (OmegaConf's key
  and element types) are allowed as themselves: calling them builds only data;
- every other global is refused: the message names the class (``posix.system``, ``builtins.open``,
  ``__main__.Exploit``) and nothing from the file has run.

Nothing of the stand-ins is used except as data: :func:`read_checkpoint` returns the ``state_dict`` tensors,
and :func:`hyper_parameters_as_data` turns an OmegaConf tree back into plain dicts and lists (values as
stored, interpolations such as ``${output_path}`` left as text) for the trainer config reader.

>>> sorted(_STAND_IN_NAMES)[:2]
['argparse.Namespace', 'builtins.object']
"""

from pathlib import Path

from ..errors import ModelLoadError

__all__ = [
    "PickledObject",
    "read_checkpoint",
    "hyper_parameters_as_data",
    "refused_global",
]

_OMEGACONF_NAMES = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.EnumNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
    "omegaconf.nodes.InterpolationResultNode",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.base.Container",
    "omegaconf.base.Node",
    "omegaconf.basecontainer.BaseContainer",
)
_TYPE_NAMES = (
    "typing.Any",
    "typing.Union",
    "typing.Optional",
    "typing.Dict",
    "typing.List",
    "typing.Tuple",
    "builtins.object",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.Path",
    "argparse.Namespace",
    "enum.Enum",
)
_STAND_IN_NAMES = _OMEGACONF_NAMES + _TYPE_NAMES


class PickledObject:
    """An inert record of an object in the pickle: its class name, constructor arguments and state.

    It never becomes the class it names; ``type_name`` is that class's dotted name.
    """

    type_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):  # builtins.getattr(x, "name") and enum lookups end up here
        return PickledObject.__new__(type(self), *args)

    def __repr__(self):
        return f"<pickled {self.type_name}>"


def _stand_in(dotted):
    module, _, name = dotted.rpartition(".")
    return type(name, (PickledObject,), {"type_name": dotted, "__module__": f"seg_uncertainty_stand_in.{module}"})


def _plain_dict(*args):
    """``collections.defaultdict(factory)`` read as a plain dict (the factory, a class, is dropped)."""
    return {}


#: Harmless constructors OmegaConf metadata names as key/element/object types: allowed as themselves.
_HARMLESS_BUILTINS = [dict, list, tuple, str, int, float, bool, bytes]
_STAND_INS = ([(_stand_in(name), name) for name in _STAND_IN_NAMES] + [(_plain_dict, "collections.defaultdict")]
              + _HARMLESS_BUILTINS)


def refused_global(error):
    """The dotted class or function name a ``weights_only`` refusal names, or ``None``."""
    text = str(error)
    for marker in ("Unsupported global: GLOBAL ", "Unsupported class ", "GLOBAL "):
        if marker in text:
            rest = text.split(marker, 1)[1]
            return rest.split()[0].rstrip(".,:;") if rest.split() else None
    return None


def read_checkpoint(path):
    """The whole checkpoint at ``path`` as data: tensors, containers and :class:`PickledObject` records.

    Raises :class:`ModelLoadError` naming the refused class when the pickle refers to anything outside the
    allow-list (see module); nothing from the file runs in that case either.
    """
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle.UnpicklingError for a refused global
        if "Weights only load failed" not in str(e):
            raise ModelLoadError(
                f"Weights {path}: expected a PyTorch weights file (torch.save of a state_dict or a Lightning "
                f"checkpoint); it cannot be read ({type(e).__name__}: {str(e)[:300]}). Fix: copy or save the file "
                "again (it may be truncated or corrupt) or check that it is the right file."
            ) from e
        name = refused_global(e)
        raise ModelLoadError(
            f"Weights {path}: the file contains Python objects other than tensors and is refused for safety "
            f"(loading it could run arbitrary code; it refers to {name or 'a class outside the allow-list'}, "
            "which is neither a tensor nor OmegaConf configuration data). Fix: save only the weights, "
            "`torch.save(model.state_dict(), path)`, or convert them to .safetensors."
        ) from e


def hyper_parameters_as_data(value, _depth=0):
    """Plain dicts, lists and scalars from a checkpoint's ``hyper_parameters`` (OmegaConf records unwrapped).

    A ``DictConfig`` record's state holds ``_content`` (key → node); a node's state holds ``_val``. Values are
    returned as stored: ``"???"`` stays ``"???"`` and ``"${a.b}"`` stays text for the config reader to judge.
    Records of anything else become their class name in angle brackets.
    """
    if _depth > 100:
        return "<too deep>"
    if isinstance(value, PickledObject):
        state = value.state
        if isinstance(state, dict) and "_content" in state:
            return hyper_parameters_as_data(state["_content"], _depth + 1)
        if isinstance(state, dict) and "_val" in state:
            return hyper_parameters_as_data(state["_val"], _depth + 1)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            return hyper_parameters_as_data(state[1], _depth + 1)  # (dict state, slot state)
        return f"<{value.type_name}>"
    if isinstance(value, dict):
        return {str(k): hyper_parameters_as_data(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hyper_parameters_as_data(v, _depth + 1) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return f"<{type(value).__name__}>"
