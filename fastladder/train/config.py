"""The training configuration: a dataclass, loadable from YAML or JSON, overridable field by field.

    config = TrainConfig.from_file("ldn121.yaml", overrides={"lr": 1e-4, "out": "runs/x"})

Unknown keys are an error naming them (a misspelt ``learning_rate`` must not be silently ignored),
and so is every value of the wrong type or out of range (:class:`fastladder.errors.ArgumentError`
naming the field), before any training starts. Fields left unset take the defaults of the config's
task (:data:`TASK_DEFAULTS`: the paper's Cityscapes LDN-121 setup for ``seg``, SSD's for ``det``),
however the config is made. The run folder gets the resolved configuration as ``config.json``.
"""
import dataclasses
import inspect
import json
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from fastladder.errors import ArgumentError

__all__ = ["TrainConfig", "load_config_file", "TASK_DEFAULTS"]

_AMP_DTYPES = ("float16", "bfloat16")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")

# The defaults of the fields that depend on the task. Detection: SSD's optimization (Liu et al.
# 2016): SGD with momentum 0.9, weight decay 5e-4, lr 1e-3 after a warmup, divided by 10 at 2/3 and
# 5/6 of the run (milestones set from the run's length in steps when none are given); every layer
# at the same lr (the backbone is part of the detector, not a frozen feature extractor); mixed
# precision when the run uses CUDA.
TASK_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "seg": dict(model="ladder_densenet121", dataset="cityscapes", optimizer="adam", lr=5e-4, momentum=0.9,
                weight_decay=1e-4, backbone_lr_divisor=5.0, schedule="poly", warmup_steps=0,
                warmup_factor=0.001, gamma=0.1, batch_size=4, val_batch_size=1, epochs=30, amp=False),
    "det": dict(model="ssd300_vgg16", dataset="voc", optimizer="sgd", lr=1e-3, momentum=0.9,
                weight_decay=5e-4, backbone_lr_divisor=1.0, schedule="step", warmup_steps=500,
                warmup_factor=0.001, gamma=0.1, batch_size=32, val_batch_size=8, epochs=200, amp=None),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` in a field of :data:`TASK_DEFAULTS` means
    "the task's default" (filled in at construction).

    Sizes are ``[height, width]`` in pixels; steps are optimizer steps (batches per process).
    """

    # what to train
    task: str = "seg"
    model: Optional[str] = None
    model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # a state_dict file for the backbone, or "imagenet" for torchvision's ImageNet weights
    backbone_weights: Optional[str] = None
    memory_efficient: bool = False  # passed to the model: recompute dense layers in backward
    # data
    dataset: Optional[str] = None
    root: Optional[str] = None
    dataset_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    crop_size: List[int] = dataclasses.field(default_factory=lambda: [448, 448])
    scale_range: List[float] = dataclasses.field(default_factory=lambda: [0.5, 2.0])
    # detection (task "det")
    image_size: Optional[List[int]] = None  # SSD input [height, width]; None: the model's own (300 or 512)
    zoom_out: float = 4.0  # SSD "expand" augmentation: canvas up to this many times the image side (1: off)
    neg_pos_ratio: float = 3.0  # hard negatives per positive prior in the MultiBox loss
    match_iou: float = 0.5  # IoU above which a prior matches a ground-truth box
    ap_method: str = "voc"  # voc | voc07 | coco101 | mot: the AP definition of the main metric
    ap_iou: float = 0.5  # IoU at which a detection counts as a true positive
    batch_size: Optional[int] = None  # per process
    val_batch_size: Optional[int] = None
    workers: int = 4
    # length
    epochs: Optional[int] = None
    steps: Optional[int] = None  # when set, the run's length in steps (overrides epochs)
    # optimization
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    backbone_lr_divisor: Optional[float] = None  # the paper's ÷5 (its code: ÷2)
    backbone_prefix: str = "features."
    weight_decay: Optional[float] = None
    momentum: Optional[float] = None
    schedule: Optional[str] = None
    poly_power: float = 1.5
    warmup_steps: Optional[int] = None
    warmup_factor: Optional[float] = None
    milestones: List[int] = dataclasses.field(default_factory=list)
    gamma: Optional[float] = None
    min_lr_factor: float = 0.0
    clip_grad_norm: Optional[float] = None
    # execution
    seed: int = 0
    device: Optional[str] = None  # default: cuda when available (the local rank's GPU under torchrun)
    amp: Optional[bool] = None  # autocast: float16 + GradScaler on CUDA; bfloat16 on CPU
    amp_dtype: Optional[str] = None  # float16 | bfloat16 (default float16 on CUDA, bfloat16 on CPU)
    channels_last: bool = False
    sync_bn: bool = False
    # bookkeeping
    eval_every: Optional[int] = None  # steps between evaluations; None: at the end of every epoch
    checkpoint_every: Optional[int] = None  # steps between "last" checkpoints; None: at each evaluation
    log_every: int = 10
    out: str = "runs/train"
    # a checkpoint path; "last": <out>/last.pt; "auto": <out>/last.pt if there is one, else start
    resume: Optional[str] = None
    overwrite: bool = False  # start over in a run folder that holds an earlier run's results
    stop_at: Optional[int] = None  # end this run after that step (the schedule still spans the whole run)
    progress: bool = True

    def __post_init__(self):
        self._fill_task_defaults()
        self.validate()

    def _fill_task_defaults(self):
        if self.task not in TASK_DEFAULTS:
            raise ArgumentError(f"task must be one of {tuple(TASK_DEFAULTS)}, got {self.task!r}")
        for name, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.amp is None:
            # float16 autocast on CUDA (SSD trains well in it); on CPU bfloat16 autocast is mostly slower
            import torch
            on_cuda = self.device is None or str(self.device).startswith("cuda")
            self.amp = torch.cuda.is_available() and on_cuda
        if (self.task == "det" and self.schedule == "step" and not self.milestones
                and _is_int(self.steps) and self.steps > 0):
            self.milestones = sorted({max(1, self.steps * 2 // 3), max(1, self.steps * 5 // 6)})

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def _check_keys(cls, values: Mapping[str, Any], source: str):
        if not isinstance(values, Mapping):
            raise ArgumentError(f"{source} must be a mapping of option names to values, got "
                                f"{type(values).__name__}")
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ArgumentError(f"{source}: unknown option(s) {', '.join(map(repr, unknown))}; "
                                f"known options: {', '.join(cls.field_names())}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Builds a config from a mapping; unknown keys and bad values raise ArgumentError naming
        them (and ``source``, the origin of the values: a file, "command line")."""
        cls._check_keys(values, source)
        try:
            return cls(**dict(values))
        except ArgumentError as error:
            raise ArgumentError(f"{source}: {error}") from None

    @classmethod
    def from_file(cls, path: str, overrides: Optional[Mapping[str, Any]] = None) -> "TrainConfig":
        """Reads a YAML (``.yaml``/``.yml``) or JSON file; ``overrides`` (e.g. CLI flags) win."""
        return cls.from_files([path], overrides)

    @classmethod
    def from_files(cls, paths: Sequence[str], overrides: Optional[Mapping[str, Any]] = None,
                   override_source: str = "overrides") -> "TrainConfig":
        """Merges YAML/JSON files in order (a later file's keys win; nested dicts such as
        ``model_kwargs`` are replaced, not merged), then ``overrides``. An error names the file
        (or ``override_source``) that gave the bad value."""
        layers = [(str(path), load_config_file(path)) for path in paths]
        return cls.from_layers(layers + [(override_source, dict(overrides or {}))])

    @classmethod
    def from_layers(cls, layers: Sequence[Tuple[str, Mapping[str, Any]]]) -> "TrainConfig":
        """A config from ``(source, values)`` layers, later layers winning key by key. A bad key or
        value is an ArgumentError naming the source that gave it (a file, "--set", "command line")."""
        values: Dict[str, Any] = {}
        origin: Dict[str, str] = {}
        for source, layer in layers:
            cls._check_keys(layer, source)
            values.update(layer)
            origin.update(dict.fromkeys(layer, source))
        try:
            return cls(**values)
        except ArgumentError as error:
            field = getattr(error, "field", None)
            source = origin.get(field)
            if source is None:  # a default of the task, or a consequence of several fields
                source = ", ".join(dict.fromkeys(origin.values())) or "config"
            raise ArgumentError(f"{source}: {error}") from None

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated again; unknown names are an error)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes}, source="replace()")

    def to_dict(self) -> Dict[str, Any]:
        """Plain Python values only (lists, dicts, numbers, strings, None): JSON- and torch.load-safe."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def save(self, path: str):
        """Writes the configuration as JSON (loadable again with :meth:`from_file`)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    # --- checks ---------------------------------------------------------------------------------

    def validate(self):
        """Normalizes sizes and checks every field's type and range; ArgumentError names the field
        and the value (its ``field`` attribute holds the name)."""
        _choice("task", self.task, tuple(TASK_DEFAULTS))
        self.crop_size = _size("crop_size", self.crop_size)
        if self.image_size is not None:
            self.image_size = _size("image_size", self.image_size, "null, ")
        self.scale_range = _number_list("scale_range", self.scale_range, 2)
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise _error("scale_range", f"must be [min, max] with 0 < min <= max, got {self.scale_range!r}")
        for name in ("batch_size", "val_batch_size", "epochs", "log_every"):
            _positive_int(name, getattr(self, name))
        for name in ("steps", "eval_every", "checkpoint_every", "stop_at"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("workers", "seed", "warmup_steps"):
            value = getattr(self, name)
            if not (_is_int(value) and value >= 0):
                raise _error(name, f"must be an int >= 0, got {value!r}")
        for name in ("lr", "backbone_lr_divisor"):
            _positive_number(name, getattr(self, name))
        for name in ("weight_decay", "momentum", "gamma", "min_lr_factor", "warmup_factor", "poly_power",
                     "neg_pos_ratio"):
            _number(name, getattr(self, name), "a number >= 0", lambda v: v >= 0)
        _number("zoom_out", self.zoom_out, "a number >= 1 (1: no zoom-out)", lambda v: v >= 1)
        for name in ("match_iou", "ap_iou"):
            _number(name, getattr(self, name), "a number in (0, 1]", lambda v: 0 < v <= 1)
        if self.clip_grad_norm is not None:
            _positive_number("clip_grad_norm", self.clip_grad_norm)
        from fastladder.eval.detection import AP_METHODS
        _choice("ap_method", self.ap_method, AP_METHODS)
        for name in ("model_kwargs", "dataset_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise _error(name, f"must be a dict, got {getattr(self, name)!r}")
        for name in ("amp", "channels_last", "sync_bn", "memory_efficient", "progress", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise _error(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.amp_dtype is not None:
            _choice("amp_dtype", self.amp_dtype, _AMP_DTYPES)
        if not isinstance(self.milestones, (list, tuple)) or not all(
                _is_int(step) and step > 0 for step in self.milestones):
            raise _error("milestones", f"must be a list of positive step counts, got {self.milestones!r}")
        self.milestones = list(self.milestones)
        if self.milestones != sorted(set(self.milestones)):
            raise _error("milestones", f"must be increasing, got {self.milestones!r}")
        from fastladder.train.optim import OPTIMIZERS, SCHEDULES
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        if self.device is not None and not (isinstance(self.device, str) and _DEVICE.match(self.device)):
            raise _error("device", f"must be cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("out", "backbone_prefix"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise _error(name, f"must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("root", "resume", "backbone_weights"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise _error(name, f"must be a path (a non-empty string) or null, got {value!r}")
        if self.backbone_weights not in (None, "imagenet") and not os.path.isfile(self.backbone_weights):
            raise _error("backbone_weights", f"must be 'imagenet' or a weights file; {self.backbone_weights} "
                                             f"does not exist")
        self._check_dataset()
        self._check_model()

    def _check_dataset(self):
        from fastladder.data.registry import dataset_info, list_datasets

        if self.dataset not in list_datasets(self.task):
            raise _error("dataset", f"must be one of {list_datasets(self.task)} for task {self.task!r}, "
                                    f"got {self.dataset!r}")
        accepted = _parameters(dataset_info(self.task, self.dataset).dataset_class)
        accepted -= {"root", "split", "image_set", "transforms"}
        if self.task == "det" and self.dataset == "voc":
            accepted |= {"train_image_set", "val_image_set"}
        unknown = sorted(set(self.dataset_kwargs) - accepted)
        if unknown:
            raise _error("dataset_kwargs", f"{unknown} are not arguments of dataset {self.dataset!r} "
                                           f"(it takes {sorted(accepted)})")

    def _check_model(self):
        import fastladder.models as models

        if not isinstance(self.model, str) or self.model not in models.list_models():
            raise _error("model", f"must be one of {models.list_models()}, got {self.model!r}")
        builder = models._registry._MODELS[self.model]
        built = inspect.signature(builder).return_annotation
        accepted = _parameters(built) if inspect.isclass(built) else None
        if accepted is None:
            return
        accepted -= {"num_classes", "backbone_weights"}
        unknown = sorted(set(self.model_kwargs) - accepted)
        if unknown:
            raise _error("model_kwargs", f"{unknown} are not arguments of model {self.model!r} (it takes "
                                         f"{sorted(accepted)})")


def _error(field: str, message: str) -> ArgumentError:
    error = ArgumentError(f"{field} {message}")
    error.field = field
    return error


def _parameters(cls) -> set:
    return {name for name, parameter in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(name: str, value, what: str, ok) -> None:
    if not (_is_number(value) and ok(value)):
        raise _error(name, f"must be {what}, got {value!r}")


def _positive_int(name: str, value):
    if not (_is_int(value) and value > 0):
        raise _error(name, f"must be a positive int, got {value!r}")


def _positive_number(name: str, value):
    _number(name, value, "a positive number (finite)", lambda v: v > 0)


def _choice(name: str, value, choices: Sequence[str]):
    if value not in choices:
        raise _error(name, f"must be one of {tuple(choices)}, got {value!r}")


def _number_list(name: str, value, length: int) -> List[float]:
    if not (isinstance(value, (list, tuple)) and len(value) == length and all(_is_number(v) for v in value)):
        raise _error(name, f"must be a list of {length} numbers, got {value!r}")
    return list(value)


def _size(name: str, value, also: str = "") -> List[int]:
    if _is_int(value):
        value = [value, value]
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(_is_int(v) and v > 0 for v in value)):
        raise _error(name, f"must be {also}a positive int or [height, width], got {value!r}")
    return list(value)


def load_config_file(path: str) -> Dict[str, Any]:
    """The mapping stored in a YAML or JSON file (by extension; YAML when unsure, which reads JSON too).
    A missing or malformed file is an ArgumentError naming it (and the line for a syntax error)."""
    if not os.path.isfile(path):
        raise ArgumentError(f"--config: file {path} does not exist")
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ArgumentError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from error
    else:
        import yaml
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ArgumentError(f"{where}: invalid YAML: {problem}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ArgumentError(f"{path} must hold a mapping of option names to values, got "
                            f"{type(values).__name__}")
    return values
