"""The model registry and `create_model`, the one way every model is built (timm's pattern).

A builder is registered with `@register_model("name")` and called as
`builder(num_classes, in_chans=..., input_size=(H, W), **kwargs)`. Names starting with `timm:` go to
timm.create_model; names ending in .yaml/.yml/.txt go to the layer-spec builder when it is present.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError
from cnnlab.registry import Registry

if TYPE_CHECKING:
    from torch import nn

# The modules whose import registers the built-in models (one line per architecture module).
ARCHITECTURES = ("cnnlab.models.simple", "cnnlab.models.classic", "cnnlab.models.googlenet", "cnnlab.models.resnet",
                 "cnnlab.models.densenet", "cnnlab.models.selu", "cnnlab.models.mobilenet")
MODELS = Registry("model", sources=ARCHITECTURES, decorator="register_model")
register_model = MODELS.register


def list_models(include_timm: str | None = None) -> list[str]:
    """Names of the registered models; with `include_timm` (a pattern like '*resnet*') also timm's."""
    names = MODELS.names()
    if include_timm:
        import timm

        names += [f"timm:{n}" for n in timm.list_models(include_timm)]
    return names


def timm_model_error(name: str) -> CnnlabError:
    """timm has no model `name`: the error names close matches and how to list them."""
    import timm

    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
    return CnnlabError(f"timm has no model '{name}'.{hint} List them with: cnnlab models --timm '*{name[:4]}*'")


def _create_timm_model(name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise timm_model_error(name)
    from cnnlab.models.weights_hint import offline_unless_reachable

    try:
        with offline_unless_reachable() if pretrained else contextlib.nullcontext():
            model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                                      **kwargs)
    except (OSError, RuntimeError) as e:  # no internet, no cached file
        if pretrained:
            from cnnlab.models.weights_hint import offline_weights_message

            raise CnnlabError(offline_weights_message(name, e)) from None
        raise
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    model.default_cfg = {k: cfg[k] for k in ("mean", "std", "input_size", "interpolation", "crop_pct") if k in cfg}
    return model


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    input_size: tuple[int, int] = (32, 32),
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name.

    Args:
        name: a registered name (`cnnlab models`), `timm:<name>`, or a layer-spec file (model.yaml).
        num_classes: outputs of the classifier.
        in_chans: input channels (1 for grayscale, 3 for RGB).
        input_size: (H, W) of the input, for models whose dense layers depend on it.
        pretrained: load pretrained weights (timm models, online).
        **kwargs: passed to the builder (e.g. activation, dropout, width).
    """
    if name.startswith("timm:"):
        return _create_timm_model(name[5:], num_classes, in_chans, pretrained, **kwargs)
    if name.endswith((".yaml", ".yml", ".txt")):
        from cnnlab.models import spec  # the layer-spec builder

        return spec.build_from_file(name, num_classes=num_classes, in_chans=in_chans, input_size=input_size,
                                    **kwargs)
    builder = MODELS.get(name)
    if pretrained:
        raise CnnlabError(
            f"model '{name}' has no downloadable pretrained weights: use --weights FILE for a local checkpoint, "
            "or a timm:<name> model with --pretrained"
        )
    try:
        return builder(num_classes, in_chans=in_chans, input_size=tuple(input_size), **kwargs)
    except TypeError as e:
        raise CnnlabError(f"model '{name}' does not take these options {sorted(kwargs)}: {e}") from None
