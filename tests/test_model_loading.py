"""Model cards and model loading: real (tiny) SMP models saved in tmp_path, every validation error, a fuzz test.

The models use the timm encoder ``tu-resnet10t`` cut to depth 3 (0.4 M parameters, ~0.1 s to build) on
64×64 tiles, so the whole file runs in a few seconds on two CPU cores.
"""

import copy
import hashlib
import os
import pickle

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seg_uncertainty.engine.errors import (
    DependencyMissingError,
    InvalidOptionError,
    ModelCardError,
    ModelLoadError,
    RasterInputError,
)
from seg_uncertainty.engine.model_card import DEFAULT_PALETTE, ModelCard, card_file_hash, load_model_card

torch = pytest.importorskip("torch")
smp = pytest.importorskip("segmentation_models_pytorch")

from seg_uncertainty.engine.dropout import (  # noqa: E402
    SeededDropout,
    dropout_modules,
    make_generators,
    set_dropout_active,
    use_generators,
)
from seg_uncertainty.engine.model_loading import (  # noqa: E402
    NO_DROPOUT_WARNING,
    LoadedModel,
    check_band_count,
    load_model,
    resolve_device,
)

from models import mutate_document  # noqa: E402

TILE = (64, 64)
ENCODER = {"encoder_name": "tu-resnet10t", "encoder_depth": 3, "encoder_weights": None, "in_channels": 3}
ARCH_KWARGS = {
    "Unet": {"decoder_channels": [32, 16, 8]},
    # FPN at encoder_depth 3 upsamples 4x too much unless `upsampling` is lowered (the loader checks this)
    "FPN": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32, "upsampling": 1},
    "PSPNet": {},
    "DeepLabV3Plus": {},
}


# --- helpers ---------------------------------------------------------------------------------------------


def model_section(arch="Unet", classes=4, **extra):
    return copy.deepcopy({"_target_": f"segmentation_models_pytorch.{arch}", **ENCODER, **ARCH_KWARGS[arch],
                          "classes": classes, **extra})


def build(arch="Unet", classes=4, **extra):
    """A plain SMP model with random weights and random BatchNorm statistics (so loading them matters)."""
    torch.manual_seed(0)
    kwargs = {k: v for k, v in model_section(arch, classes, **extra).items() if k != "_target_"}
    model = getattr(smp, arch)(**kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def write_card(folder, document, name="card.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def card_doc(model=None, weights="model.pth", **top):
    doc = {"weights": weights, "input": {"bands": [1, 2, 3], "scale": 255}, "tiling": {
        "model_input_shape": list(TILE), "step_shape": [32, 32]}}
    if model is not None:
        doc = {"model": model, **doc}
    doc.update(top)
    return doc


def example_input():
    return torch.randn(2, 3, *TILE, generator=torch.Generator().manual_seed(1))


def run(model, x):
    with torch.no_grad():
        return model(x)


@pytest.fixture
def plain_unet(tmp_path):
    """A plain Unet (no dropout) and its state_dict saved as model.pth."""
    model = build("Unet")
    torch.save(model.state_dict(), tmp_path / "model.pth")
    return model


# --- model cards: valid documents ----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["segmentation_models_pytorch.FPN", "smp.FPN", "FPN", "fpn"])
def test_target_spellings_resolve_to_the_class_name(tmp_path, target):
    (tmp_path / "model.pth").write_bytes(b"x")
    card = load_model_card(write_card(tmp_path, card_doc({"_target_": target, "classes": 4})))
    assert card.architecture == "FPN"
    assert "_target_" not in card.model_kwargs


def test_card_defaults_and_derived_fields(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"weights")
    doc = {"model": {"_target_": "smp.Unet", "classes": 3, "decoder_dropout": 0.2},
           "weights": "model.pth", "input": {"bands": [3, 2, 1], "mean": [10, 20, 30], "std": [1, 2, 3]}}
    card = load_model_card(write_card(tmp_path, doc))
    assert isinstance(card, ModelCard)
    assert card.path == (tmp_path / "card.yaml").absolute()
    assert card.weights_path == (tmp_path / "model.pth").resolve() and card.weights_path.is_absolute()
    assert card.bands == (3, 2, 1) and card.scale is None
    assert card.mean == (10.0, 20.0, 30.0) and card.std == (1.0, 2.0, 3.0)
    assert card.class_names == ("class_0", "class_1", "class_2")
    assert card.class_colors == DEFAULT_PALETTE[:3]
    assert (card.n_classes, card.out_channels, card.binary) == (3, 3, False)
    assert (card.tile_shape, card.step_shape) == ((512, 512), (256, 256))
    assert card.dropout_p == 0.2
    assert card.model_kwargs == {"classes": 3, "decoder_dropout": 0.2}
    assert card_file_hash(card.weights_path) == hashlib.sha256(b"weights").hexdigest()
    assert card_file_hash(card) == card_file_hash(card.weights_path)


def test_binary_card_reads_one_channel_as_two_classes(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"x")
    doc = card_doc({"_target_": "Unet", "classes": 1}, classes=[{"name": "building", "color": "#FF0000"}],
                   tiling={"model_input_shape": 128})
    card = load_model_card(write_card(tmp_path, doc))
    assert (card.out_channels, card.n_classes, card.binary) == (1, 2, True)
    assert card.class_names == ("background", "building")
    assert card.class_colors[1] == "#ff0000"
    assert (card.tile_shape, card.step_shape) == ((128, 128), (64, 64))  # step defaults to half the tile


def test_torchscript_card_takes_class_count_from_classes_list(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    doc = card_doc(weights="model.pt", classes=["water", {"name": "forest"}, "urban"])
    card = load_model_card(write_card(tmp_path, doc))
    assert card.architecture is None and card.is_torchscript and card.model_kwargs == {}
    assert card.n_classes == 3 and card.class_names == ("water", "forest", "urban")


# --- model cards: every validation error -----------------------------------------------------------------

# (mutation of a valid SMP card, text the ModelCardError must contain)
INVALID_CARDS = [
    (lambda d: d.update(extra=1), "unknown key"),                                      # unknown top-level key
    (lambda d: d.update(extra=1), "model, weights, input, classes, num_classes, tiling"),  # ... lists valid keys
    (lambda d: d["input"].update(band=[1]), "`input.band`"),                           # unknown input key
    (lambda d: d["model"].update(classes="four"), "`model.classes`"),                  # wrong type
    (lambda d: d["model"].update(classes=True), "`model.classes`"),                    # bool is not a count
    (lambda d: d["model"].pop("classes"), "`model.classes`"),                          # missing
    (lambda d: d["model"].update(_target_="os.system"), "not an allowed SMP architecture"),
    (lambda d: d["model"].update(_target_="segmentation_models_pytorch.base.SegmentationModel"),
     "not an allowed SMP architecture"),
    (lambda d: d["model"].update(in_channels=4), "`model.in_channels`"),               # != number of bands
    (lambda d: d["model"].update(decoder_dropout=1.5), "`model.decoder_dropout`"),     # not a rate
    (lambda d: d["model"].update(psp_dropout=0.1, decoder_dropout=0.1), "one dropout key"),  # two names
    (lambda d: d.update(model=[1, 2]), "`model`"),                                     # not a mapping
    (lambda d: d.update(num_classes=4), "`num_classes`"),                              # only for TorchScript
    (lambda d: d.pop("input"), "`input`"),
    (lambda d: d["input"].update(bands=[0, 1, 2]), "`input.bands`"),                   # bands are 1-based
    (lambda d: d["input"].update(bands="1,2,3"), "`input.bands`"),
    (lambda d: d["input"].update(bands=[]), "`input.bands`"),
    (lambda d: d["input"].update(scale=0), "`input.scale`"),
    (lambda d: d["input"].update(scale=float("nan")), "`input.scale`"),
    (lambda d: d["input"].update(mean=[1, 2, 3]), "`input.mean/input.std`"),           # mean without std
    (lambda d: d["input"].update(mean=[1, 2, 3], std=[1, 1, 1]), "either scale or mean/std"),
    (lambda d: (d["input"].pop("scale"), d["input"].update(mean=[1, 2], std=[1, 1])), "`input.mean`"),
    (lambda d: (d["input"].pop("scale"), d["input"].update(mean=[1, 2, 3], std=[1, 0, 1])), "`input.std`"),
    (lambda d: d["input"].update(nodata_fill="zero"), "`input.nodata_fill`"),
    (lambda d: d.update(classes=[{"name": "a", "color": "blue"}] * 4), "`classes[0].color`"),
    (lambda d: d.update(classes=[{"name": "a", "color": "#12345"}] * 4), "#rrggbb"),
    (lambda d: d.update(classes=["a", "b", "c"]), "`classes`"),                        # 3 names, 4 classes
    (lambda d: d.update(classes=["a", "b", "c", "a"]), "distinct class names"),
    (lambda d: d.update(classes=["a", "b", "c", {"label": "d"}]), "`classes[3].label`"),
    (lambda d: d.update(tiling={"model_input_shape": [0, 64]}), "`tiling.model_input_shape`"),
    (lambda d: d.update(tiling={"model_input_shape": -64}), "`tiling.model_input_shape`"),
    (lambda d: d.update(tiling={"model_input_shape": [64, 64], "step_shape": [65, 32]}), "`tiling.step_shape`"),
    (lambda d: d.update(tiling={"model_input_shape": [64, 64], "step_shape": [0, 32]}), "`tiling.step_shape`"),
    (lambda d: d.update(tiling={"tile": 64}), "`tiling.tile`"),
    (lambda d: d.update(weights=None), "`weights`"),
    (lambda d: d.update(weights=""), "`weights`"),
    (lambda d: d.update(weights="nothing_here.pth"), "nothing_here.pth, which does not exist"),
    (lambda d: d.update(weights="."), "which is a folder"),
    (lambda d: d.update(weights="bad\x00name"), "`weights`"),
]


@pytest.mark.parametrize("mutate, fragment", INVALID_CARDS)
def test_invalid_card_raises_model_card_error_naming_the_key(tmp_path, mutate, fragment):
    (tmp_path / "model.pth").write_bytes(b"x")
    doc = card_doc(model_section("Unet"))
    mutate(doc)
    path = write_card(tmp_path, doc)
    with pytest.raises(ModelCardError) as info:
        load_model_card(path)
    message = str(info.value)
    assert fragment in message
    assert str(path) in message and "Fix" in message


def test_missing_weights_message_names_the_full_path(tmp_path):
    path = write_card(tmp_path, card_doc(model_section(), weights="sub/w.pth"))
    with pytest.raises(ModelCardError, match="does not exist") as info:
        load_model_card(path)
    assert str(tmp_path / "sub" / "w.pth") in str(info.value)


def test_torchscript_card_needs_a_class_count(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ModelCardError, match="num_classes"):
        load_model_card(write_card(tmp_path, card_doc(weights="model.pt")))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "is empty"),                                            # empty file
        ("   \n\n", "is empty"),
        ("# only a comment\n", "holds no data"),
        ("- 1\n- 2\n", "a YAML mapping"),                           # non-mapping YAML
        ("just a string", "a YAML mapping"),
        ("input: {bands: [1, 2\n", "is not valid YAML"),            # syntax error
        ("a: b\n c: d\n", "is not valid YAML"),
        ("x: !!python/object/apply:os.system ['true']\n", "is not valid YAML"),  # no Python tags
        ("when: 2021-13-45\n", "cannot be parsed"),                 # PyYAML raises ValueError here
    ],
)
def test_unparseable_cards(tmp_path, text, fragment):
    path = tmp_path / "card.yaml"
    path.write_text(text)
    with pytest.raises(ModelCardError, match=fragment) as info:
        load_model_card(path)
    if "valid YAML" in fragment:
        assert isinstance(info.value.__cause__, yaml.YAMLError)


def test_unquoted_colour_gets_a_hint(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"x")
    text = yaml.safe_dump(card_doc(model_section(classes=1))) + "classes:\n  - name: a\n    color: #1f78b4\n"
    path = tmp_path / "card.yaml"
    path.write_text(text)
    with pytest.raises(ModelCardError, match="unquoted # starts a YAML comment"):
        load_model_card(path)


def test_missing_and_binary_card_files(tmp_path):
    with pytest.raises(ModelCardError, match="does not exist"):
        load_model_card(tmp_path / "nope.yaml")
    with pytest.raises(ModelCardError, match="cannot be read"):
        load_model_card(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"\x80\x02\xff\xfe\x00")
    with pytest.raises(ModelCardError, match="not UTF-8"):
        load_model_card(tmp_path / "w.pth")


# --- model cards: fuzz ---------------------------------------------------------------------------------

_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["model.pth", "#1f78b4", "smp.Unet", "os.system", "..", "/", "~"]),
)
_keys = st.one_of(
    st.sampled_from(["model", "weights", "input", "classes", "num_classes", "tiling", "bands", "scale", "mean",
                     "std", "nodata_fill", "_target_", "classes", "in_channels", "decoder_dropout", "name",
                     "color", "model_input_shape", "step_shape"]),
    st.text(max_size=6), st.integers(-3, 3),
)
_documents = st.recursive(_leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_keys, kids, max_size=5),
                          max_leaves=20)


def _valid_doc():
    return card_doc(model_section("Unet", decoder_dropout=0.1),
                    classes=[{"name": f"c{i}", "color": "#00ff00"} for i in range(4)])


@st.composite
def _mutated_cards(draw):
    return mutate_document(draw, _valid_doc(), draw(st.integers(1, 3)), _keys, _documents)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "model.pth").write_bytes(b"x")
    return folder


def _load_or_card_error(folder, text):
    path = folder / "card.yaml"
    path.write_text(text)
    try:
        assert isinstance(load_model_card(path), ModelCard)
    except ModelCardError as e:
        assert str(e)


_FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.one_of(_documents, _mutated_cards()))
def test_fuzz_documents_raise_only_model_card_error(fuzz_dir, document):
    _load_or_card_error(fuzz_dir, yaml.safe_dump(document))


@_FUZZ
@given(st.text(alphabet=st.sampled_from(list("{}[]:,-#&*!|>'\"%@` \n\tab01.~?")), max_size=60))
def test_fuzz_raw_text_raises_only_model_card_error(fuzz_dir, text):
    _load_or_card_error(fuzz_dir, text)


def test_the_fuzz_base_card_is_valid(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"x")
    assert load_model_card(write_card(tmp_path, _valid_doc())).dropout_p == 0.1


# --- loading: dropout placement ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["FPN", "PSPNet", "DeepLabV3Plus"])
def test_decoder_dropout_reaches_the_architecture_argument(tmp_path, arch):
    torch.save(build(arch).state_dict(), tmp_path / "model.pth")
    loaded = load_model(write_card(tmp_path, card_doc(model_section(arch, decoder_dropout=0.3))))
    layers = dropout_modules(loaded.model)
    assert loaded.n_dropout_layers == len(layers) >= 1
    assert [m.p for m in layers] == [0.3] * len(layers)
    assert not loaded.warnings
    if arch == "FPN":
        assert isinstance(loaded.model.decoder.dropout, SeededDropout)
        assert loaded.model.decoder.dropout.channelwise


def test_unet_gets_dropout2d_before_the_head_and_plain_weights_still_load(tmp_path, plain_unet):
    loaded = load_model(write_card(tmp_path, card_doc(model_section("Unet", decoder_dropout=0.25))))
    model = loaded.model
    head = model.segmentation_head
    assert isinstance(head[0], SeededDropout) and head[0].p == 0.25 and head[0].channelwise
    assert loaded.n_dropout_layers == 1 and not loaded.warnings
    # the head's parameters keep their names: the file's keys are the model's keys
    assert list(model.state_dict()) == list(plain_unet.state_dict())
    x = example_input()
    torch.testing.assert_close(run(model, x), run(plain_unet, x), rtol=0, atol=0)
    # ... and the dropout sits in the path: switched on, it changes the output
    set_dropout_active(model, True)
    with use_generators(model, make_generators([(0, 0, 0, 0), (0, 0, 0, 1)], 7, "cpu")):
        assert not torch.allclose(run(model, x), run(plain_unet, x))


def test_no_dropout_model_warns(tmp_path, plain_unet):
    with pytest.warns(UserWarning, match="no dropout layer"):
        loaded = load_model(write_card(tmp_path, card_doc(model_section("Unet"))))
    assert loaded.n_dropout_layers == 0
    assert loaded.warnings == [NO_DROPOUT_WARNING]


def test_activation_is_dropped_so_the_model_returns_logits(tmp_path, plain_unet):
    with pytest.warns(UserWarning, match="activation"):
        loaded = load_model(write_card(tmp_path, card_doc(model_section("Unet", activation="softmax2d",
                                                                        decoder_dropout=0.1))))
    x = example_input()
    torch.testing.assert_close(run(loaded.model, x), run(plain_unet, x), rtol=0, atol=0)


# --- loading: weight formats ---------------------------------------------------------------------------


def test_loaded_model_fields(tmp_path, plain_unet):
    path = write_card(tmp_path, card_doc(model_section("Unet", decoder_dropout=0.1)))
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert (loaded.n_classes, loaded.binary, loaded.device) == (4, False, torch.device("cpu"))
    assert loaded.weights_sha256 == hashlib.sha256((tmp_path / "model.pth").read_bytes()).hexdigest()
    assert not loaded.model.training
    assert all(not m.training for m in loaded.model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_lightning_checkpoint_with_model_prefix(tmp_path, plain_unet):
    state = {f"model.{k}": v for k, v in plain_unet.state_dict().items()}
    state["criterion.pos_weight"] = torch.ones(4)
    torch.save({"epoch": 3, "global_step": 10, "state_dict": state, "optimizer_states": [{"lr": 0.1}]},
               tmp_path / "last.ckpt")
    card = write_card(tmp_path, card_doc(model_section("Unet", decoder_dropout=0.1), weights="last.ckpt"))
    with pytest.warns(UserWarning, match="ignored 1 others"):
        loaded = load_model(card)
    x = example_input()
    torch.testing.assert_close(run(loaded.model, x), run(plain_unet, x), rtol=0, atol=0)


def test_safetensors(tmp_path, plain_unet):
    from safetensors.torch import save_file

    save_file(plain_unet.state_dict(), str(tmp_path / "model.safetensors"))
    loaded = load_model(write_card(tmp_path, card_doc(model_section("Unet", decoder_dropout=0.1),
                                                      weights="model.safetensors")))
    x = example_input()
    torch.testing.assert_close(run(loaded.model, x), run(plain_unet, x), rtol=0, atol=0)


def test_binary_model(tmp_path):
    torch.save(build("Unet", classes=1).state_dict(), tmp_path / "model.pth")
    loaded = load_model(write_card(tmp_path, card_doc(model_section("Unet", classes=1, decoder_dropout=0.1))))
    assert (loaded.binary, loaded.n_classes) == (True, 2)
    assert run(loaded.model, example_input()).shape == (2, 1, *TILE)


def test_torchscript(tmp_path):
    plain = build("FPN", decoder_dropout=0.2)
    torch.jit.trace(plain, example_input()[:1]).save(str(tmp_path / "model.pt"))
    card = write_card(tmp_path, card_doc(weights="model.pt", num_classes=4))
    with pytest.warns(UserWarning) as record:
        loaded = load_model(card)
    assert loaded.card.is_torchscript and loaded.n_classes == 4
    assert loaded.n_dropout_layers == 0
    assert any("TorchScript model" in str(w.message) for w in record)
    assert any("no dropout layer" in str(w.message) for w in record)
    x = example_input()
    torch.testing.assert_close(run(loaded.model, x), run(plain, x))


def test_torchscript_with_wrong_class_count(tmp_path):
    torch.jit.trace(build("Unet"), example_input()[:1]).save(str(tmp_path / "model.pt"))
    card = write_card(tmp_path, card_doc(weights="model.pt", num_classes=1))
    with pytest.raises(ModelLoadError, match=r"\(1, 1, 64, 64\).*got \(1, 4, 64, 64\)"):
        load_model(card)


def test_torchscript_file_with_a_model_section_and_state_dict_without(tmp_path, plain_unet):
    torch.jit.trace(plain_unet, example_input()[:1]).save(str(tmp_path / "model.pt"))
    with pytest.raises(ModelLoadError, match="TorchScript archive"):
        load_model(write_card(tmp_path, card_doc(model_section("Unet"), weights="model.pt")))
    with pytest.raises(ModelLoadError, match="TorchScript file .* is expected"):
        load_model(write_card(tmp_path, card_doc(weights="model.pth", num_classes=4)))


# --- loading: refusals ---------------------------------------------------------------------------------


class _Malicious:
    """Unpickling this creates ``marker``: what an attacker's payload would do, only harmless."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, plain_unet, writer):
    marker = tmp_path / "pwned"
    payload = {"state_dict": plain_unet.state_dict(), "evil": _Malicious(marker)}
    with open(tmp_path / "evil.pth", "wb") as f:
        if writer == "pickle":
            pickle.dump(payload, f)
        else:
            torch.save(payload, f)
    assert not marker.exists()
    card = write_card(tmp_path, card_doc(model_section("Unet"), weights="evil.pth"))
    with pytest.raises(ModelLoadError, match="Python objects other than tensors and is refused for safety"):
        load_model(card)
    assert not marker.exists()


def test_target_os_system_is_never_imported(tmp_path, monkeypatch):
    (tmp_path / "model.pth").write_bytes(b"x")
    monkeypatch.setattr(os, "system", lambda *a: pytest.fail("os.system was called"))
    path = write_card(tmp_path, card_doc(model_section("Unet", _target_="os.system")))
    with pytest.raises(ModelCardError, match=r"\(Unet, UnetPlusPlus, .*'os.system', which is not an allowed SMP"):
        load_model(path)


def test_wrong_class_count_names_the_shapes(tmp_path, plain_unet):
    card = write_card(tmp_path, card_doc(model_section("Unet", classes=5)))
    with pytest.raises(ModelLoadError) as info:
        load_model(card)
    message = str(info.value)
    assert "segmentation_head.0.weight: (4, 8, 3, 3) in the file, (5, 8, 3, 3) in the model" in message
    assert "another architecture, encoder or class count" in message


def test_weights_of_another_architecture(tmp_path):
    torch.save(build("FPN").state_dict(), tmp_path / "model.pth")
    with pytest.raises(ModelLoadError, match="not in the model"):
        load_model(write_card(tmp_path, card_doc(model_section("Unet"))))


@pytest.mark.parametrize("name, cut", [("model.pth", 0.5), ("model.pth", 0.0), ("model.safetensors", 0.5)])
def test_truncated_weights(tmp_path, plain_unet, name, cut):
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(plain_unet.state_dict(), str(tmp_path / name))
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(write_card(tmp_path, card_doc(model_section("Unet"), weights=name)))


def test_garbage_and_non_state_dict_files(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"hello, I am not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot be read"):
        load_model(write_card(tmp_path, card_doc(model_section("Unet"))))
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "model.pth")
    with pytest.raises(ModelLoadError, match="expected a state_dict"):
        load_model(write_card(tmp_path, card_doc(model_section("Unet"))))


def test_unbuildable_model_section(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"x")
    doc = card_doc(model_section("Unet", encoder_name="no-such-encoder"))
    with pytest.raises(ModelCardError, match="SMP failed"):
        load_model(write_card(tmp_path, doc))


def test_tile_not_divisible_by_the_output_stride(tmp_path):
    torch.save(build("FPN").state_dict(), tmp_path / "model.pth")
    doc = card_doc(model_section("FPN"), tiling={"model_input_shape": [60, 64], "step_shape": 30})
    with pytest.raises(ModelCardError, match=r"divisible by 8.*\[64, 64\]"):
        load_model(write_card(tmp_path, doc))


def test_output_larger_than_the_tile_is_refused(tmp_path):
    section = model_section("FPN")
    del section["upsampling"]  # FPN at encoder_depth 3 then returns 256x256 logits for a 64x64 tile
    torch.save(build("FPN", upsampling=4).state_dict(), tmp_path / "model.pth")
    with pytest.raises(ModelLoadError, match=r"\(1, 4, 64, 64\).*got \(1, 4, 256, 256\).*upsampling"):
        load_model(write_card(tmp_path, card_doc(section)))


def test_missing_smp_raises_dependency_error(tmp_path, monkeypatch):
    import sys

    (tmp_path / "model.pth").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    with pytest.raises(DependencyMissingError, match="pip install -r requirements.txt"):
        load_model(write_card(tmp_path, card_doc(model_section("Unet"))))


# --- devices and bands ---------------------------------------------------------------------------------


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InvalidOptionError, match="choose auto or cpu"):
        resolve_device("cuda")
    with pytest.raises(InvalidOptionError, match="auto, cpu, cuda"):
        resolve_device("tpu")


def test_check_band_count(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"x")
    doc = card_doc(model_section("Unet"))
    doc["input"]["bands"] = [1, 2, 4]
    card = load_model_card(write_card(tmp_path, doc))
    check_band_count(card, 4)
    with pytest.raises(RasterInputError, match=r"bands \[1, 2, 4\], but the raster has 3 band\(s\)"):
        check_band_count(card, 3)


def test_card_is_not_mutated_by_loading(tmp_path, plain_unet):
    card = load_model_card(write_card(tmp_path, card_doc(model_section("Unet", decoder_dropout=0.1))))
    before = copy.deepcopy(card.model_kwargs)
    load_model(card)
    assert card.model_kwargs == before
