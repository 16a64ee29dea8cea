"""The training configuration: a dataclass, loadable from YAML or JSON, overridable field by field.

    config = TrainConfig.from_file("ldn121.yaml", overrides={"lr": 1e-4, "out": "runs/x"})

Unknown keys are an error naming them (a misspelt ``learning_rate`` must not be silently ignored).
The run folder gets the resolved configuration as ``config.json``.
"""
import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = ["TrainConfig", "load_config_file"]

_AMP_DTYPES = ("float16", "bfloat16")
# fastladder.eval.detection.AP_METHODS (not imported: configs load without the extension)
_AP_METHODS = ("voc07", "voc", "coco101", "mot")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults: the paper's Cityscapes LDN-121 setup.

    Sizes are ``[height, width]`` in pixels; steps are optimizer steps (batches per process).
    """

    # what to train
    task: str = "seg"
    model: str = "ladder_densenet121"
    model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    backbone_weights: Optional[str] = None  # a torchvision DenseNet state_dict file for the backbone
    memory_efficient: bool = False  # passed to the model: recompute dense layers in backward
    # data
    dataset: str = "cityscapes"
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
    batch_size: int = 4  # per process
    val_batch_size: int = 1
    workers: int = 4
    # length
    epochs: int = 30
    steps: Optional[int] = None  # when set, the run's length in steps (overrides epochs)
    # optimization
    optimizer: str = "adam"
    lr: float = 5e-4
    backbone_lr_divisor: float = 5.0  # the paper's ÷5 (its code: ÷2)
    backbone_prefix: str = "features."
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "poly"
    poly_power: float = 1.5
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    milestones: List[int] = dataclasses.field(default_factory=list)
    gamma: float = 0.1
    min_lr_factor: float = 0.0
    clip_grad_norm: Optional[float] = None
    # execution
    seed: int = 0
    device: Optional[str] = None  # default: cuda when available (the local rank's GPU under torchrun)
    amp: bool = False  # autocast: float16 + GradScaler on CUDA; bfloat16 on CPU
    amp_dtype: Optional[str] = None  # float16 | bfloat16 (default float16 on CUDA, bfloat16 on CPU)
    channels_last: bool = False
    sync_bn: bool = False
    # bookkeeping
    eval_every: Optional[int] = None  # steps between evaluations; None: at the end of every epoch
    checkpoint_every: Optional[int] = None  # steps between "last" checkpoints; None: at each evaluation
    log_every: int = 10
    out: str = "runs/train"
    resume: Optional[str] = None  # a checkpoint path, or "last" for <out>/last.pt
    stop_at: Optional[int] = None  # end this run after that step (the schedule still spans the whole run)
    progress: bool = True

    def __post_init__(self):
        self.validate()

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Builds a config from a mapping; unknown keys raise ValueError naming them and ``source``."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{source} must be a mapping of option names to values, got "
                             f"{type(values).__name__}")
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {', '.join(map(repr, unknown))}; "
                             f"known options: {', '.join(cls.field_names())}")
        return cls(**dict(values))

    @classmethod
    def from_file(cls, path: str, overrides: Optional[Mapping[str, Any]] = None) -> "TrainConfig":
        """Reads a YAML (``.yaml``/``.yml``) or JSON file; ``overrides`` (e.g. CLI flags) win."""
        values = load_config_file(path)
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{path}: unknown option(s) {', '.join(map(repr, unknown))}; "
                             f"known options: {', '.join(cls.field_names())}")
        values.update(overrides or {})
        return cls.from_dict(values, source=str(path))

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
        """Normalizes sizes and checks types and ranges; ValueError names the field and the value."""
        if isinstance(self.crop_size, int):
            self.crop_size = [self.crop_size, self.crop_size]
        self.crop_size = list(self.crop_size) if isinstance(self.crop_size, (list, tuple)) else self.crop_size
        if not (isinstance(self.crop_size, list) and len(self.crop_size) == 2
                and all(isinstance(s, int) and s > 0 for s in self.crop_size)):
            raise ValueError(f"crop_size must be a positive int or [height, width], got {self.crop_size!r}")
        if self.image_size is not None:
            if isinstance(self.image_size, int) and not isinstance(self.image_size, bool):
                self.image_size = [self.image_size, self.image_size]
            size = list(self.image_size) if isinstance(self.image_size, (list, tuple)) else None
            if not (size and len(size) == 2 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                                   for s in size)):
                raise ValueError(f"image_size must be null, a positive int or [height, width], got "
                                 f"{self.image_size!r}")
            self.image_size = size
        if not (isinstance(self.zoom_out, (int, float)) and not isinstance(self.zoom_out, bool)
                and self.zoom_out >= 1):
            raise ValueError(f"zoom_out must be a number >= 1 (1: no zoom-out), got {self.zoom_out!r}")
        if not (isinstance(self.neg_pos_ratio, (int, float)) and not isinstance(self.neg_pos_ratio, bool)
                and self.neg_pos_ratio >= 0):
            raise ValueError(f"neg_pos_ratio must be a number >= 0, got {self.neg_pos_ratio!r}")
        for name in ("match_iou", "ap_iou"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1):
                raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
        if self.ap_method not in _AP_METHODS:
            raise ValueError(f"ap_method must be one of {_AP_METHODS}, got {self.ap_method!r}")
        self.scale_range = list(self.scale_range)
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be [min, max] with 0 < min <= max, got {self.scale_range!r}")
        for name in ("batch_size", "val_batch_size", "epochs", "log_every"):
            _positive_int(name, getattr(self, name))
        for name in ("steps", "eval_every", "checkpoint_every", "stop_at"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("workers", "seed", "warmup_steps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("lr", "backbone_lr_divisor"):
            _positive_number(name, getattr(self, name))
        for name in ("weight_decay", "momentum", "gamma", "min_lr_factor", "warmup_factor", "poly_power"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.clip_grad_norm is not None:
            _positive_number("clip_grad_norm", self.clip_grad_norm)
        for name in ("model_kwargs", "dataset_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {getattr(self, name)!r}")
        for name in ("amp", "channels_last", "sync_bn", "memory_efficient", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.amp_dtype is not None and self.amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {_AMP_DTYPES} or null, got {self.amp_dtype!r}")
        if not isinstance(self.milestones, (list, tuple)):
            raise ValueError(f"milestones must be a list of steps, got {self.milestones!r}")
        self.milestones = list(self.milestones)
        from fastladder.train.optim import OPTIMIZERS, SCHEDULES
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not isinstance(self.out, str) or not self.out:
            raise ValueError(f"out must be a folder path, got {self.out!r}")


def _positive_int(name: str, value):
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _positive_number(name: str, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def load_config_file(path: str) -> Dict[str, Any]:
    """The mapping stored in a YAML or JSON file (by extension; YAML when unsure, which reads JSON too)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from error
    else:
        import yaml
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
            raise ValueError(f"{where}: invalid YAML: {error}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values, got {type(values).__name__}")
    return values
