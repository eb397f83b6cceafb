"""Build the network a :class:`~engine.model_card.ModelCard` describes, load its weights safely, ready MC Dropout.

The code lives in the :mod:`engine.loader` package (one module per concern); this module keeps the import
path. ``load_model(card, device)`` does, in order:

1. builds the SMP class named by ``model._target_`` (looked up by name in an allow-list, never imported from a
   dotted path) with the card's keyword arguments, except that ``encoder_weights`` is forced to ``None`` (the
   card's weights replace pretrained ones; nothing is downloaded), ``activation`` is dropped (the engine
   turns logits into probabilities itself: softmax, or sigmoid for one channel) and ``aux_params`` is dropped
   (the classification head's output is not used; its weights in the file are ignored);
2. routes the card's dropout rate ``p`` to the architecture's own argument, found with :func:`inspect.signature`
   (FPN ``decoder_dropout``, PSPNet ``psp_dropout``, DeepLabV3/V3+ ``decoder_aspp_dropout``); an architecture
   without one gets ``nn.Dropout2d(p)`` in front of its segmentation head, registered under the name
   ``mc_dropout`` so the head's ``0.weight``-style keys keep their names; a head that already holds dropout
   layers (DPT) has their rate set to ``p``;
3. loads the weights: ``torch.load(..., weights_only=True)`` (a pickle that would build any Python object
   other than tensors and containers is refused before anything in it runs), or ``safetensors``; accepts a
   plain state_dict, a Lightning checkpoint (``state_dict`` with a ``model.``/``net.``-style prefix) and
   ``{"model_state_dict": ...}``; checks every key and shape before copying anything;
4. cards without a ``model:`` section run a whole program instead, by the weights file's suffix: ``.onnx``
   through onnxruntime (:mod:`engine.loader.onnx_program`), ``.pt2`` through ``torch.export.load``
   (:mod:`engine.loader.exported_program`), anything else through ``torch.jit.load`` (TorchScript); a Lightning
   checkpoint whose hyper-parameters hold OmegaConf objects is read by :mod:`engine.loader.lightning_checkpoint`,
   which runs no code from the file;
5. runs one forward pass on a zero tile and checks the output is logits ``(1, out_channels, *tile_shape)``
   (this catches a wrong ``num_classes`` in a TorchScript card, and SMP settings such as FPN with
   ``encoder_depth`` < 5, whose output is larger than its input unless ``upsampling`` is lowered);
6. calls :func:`engine.dropout.prepare_mc_dropout` (eval mode, seeded dropout layers) and warns when the model
   has no dropout layer with ``p > 0``: MC samples would then all be equal.

torch and segmentation-models-pytorch are imported inside the functions, so importing this module (and the
QGIS plugin) works without them; using it without them raises :class:`DependencyMissingError`.
"""

from .loader import NO_DROPOUT_WARNING, LoadedModel, check_band_count, load_model, resolve_device

__all__ = [
    "LoadedModel",
    "load_model",
    "resolve_device",
    "check_band_count",
    "NO_DROPOUT_WARNING",
]
