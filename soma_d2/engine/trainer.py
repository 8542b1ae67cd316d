"""The soma-d2 trainer: Detectron2's DefaultTrainer with the SoMA recipe's pieces plugged in.

What changes against DefaultTrainer, and why: the optimizer gets per-group rules (backbone lr/decay
multipliers, no decay for norms and tokens); the weight decay is annealed every iteration; an EMA of
the trainable weights can drive evaluation; AMP runs in bf16/fp16 on GPU and is refused with a
warning on CPU (Detectron2's AMPTrainer asserts CUDA); DDP works on CPU (gloo, no device_ids);
checkpoints refuse weights that would corrupt SoMA layers; evaluation ends with one DG table; the
final checkpoint is accompanied by an adapter-only file.
"""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from .. import modeling  # noqa: F401  (registers build_soma_vit_backbone)
from ..checkpoint.adapter import export_adapter
from ..checkpoint.checkpointer import (
    SoMACheckpointer,
    check_free_space,
    estimate_checkpoint_bytes,
)
from ..data.catalog import check_datasets_exist
from ..data.mapper_registry import build_mapper
from ..data.sampler import build_resumable_train_loader
from ..evaluation import DGTable, build_dg_evaluator, dg_run_name
from ..modeling.segmentation import default_mapper_name
from ..solver import AnnealWeightDecayHook, build_lr_scheduler, build_optimizer
from ..utils import atomic_torch_save
from .ema import EMAHook, ModelEMA
from .eval_hook import SafeEvalHook
from .rng import RNGState
from .robustness import evaluate_corruptions

logger = logging.getLogger(__name__)

__all__ = ["SoMATrainer", "create_ddp_model", "check_output_dir_writable"]

ADAPTER_FILENAME = "model_final_adapter.pth"


def create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """Wrap in DDP when distributed; CPU modules get `device_ids=None` (Detectron2 passes a GPU id)."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).is_cuda
    kwargs.setdefault("device_ids", [comm.get_local_rank()] if on_cuda else None)
    return DistributedDataParallel(model, **kwargs)


def check_output_dir_writable(path: str) -> None:
    """Fail before training when OUTPUT_DIR cannot take files (read-only, full disk, not a dir)."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test.{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise RuntimeError(
            f"OUTPUT_DIR={path!r} is not writable ({e.strerror or e}); checkpoints could not be "
            "saved. Choose another OUTPUT_DIR or free space before training."
        ) from e


def _amp_dtype(cfg: CfgNode) -> torch.dtype:
    """The torch dtype of SOLVER.AMP.DTYPE (its accepted values are checked with the config)."""
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.SOLVER.AMP.DTYPE]


def check_run_datasets(cfg: CfgNode, training: bool) -> None:
    """Every `DATASETS.TEST` entry (and `DATASETS.TRAIN`, when `training`) is registered and its
    folders and split files exist: checked before the model is built, which for ViT-L includes a
    two-minute decomposition. An evaluation does not need the training sets' files (only their
    metadata, for the source domain), so `--eval-only` does not check them."""
    names = {"DATASETS.TRAIN": cfg.DATASETS.TRAIN} if training else {}
    check_datasets_exist({**names, "DATASETS.TEST": cfg.DATASETS.TEST})


class SoMATrainer(DefaultTrainer):
    """DefaultTrainer with the SoMA recipe (see the module docstring for what differs)."""

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if comm.is_main_process():
            check_output_dir_writable(cfg.OUTPUT_DIR)
        check_run_datasets(cfg, training=True)  # a missing root fails before the decomposition

        model = self.build_model(cfg)
        # an incompatible MODEL.WEIGHTS must fail now, not after the data set has been loaded
        SoMACheckpointer(model, cfg.OUTPUT_DIR).check_weights_file(cfg.MODEL.WEIGHTS)
        if comm.is_main_process():
            check_free_space(cfg.OUTPUT_DIR, estimate_checkpoint_bytes(model))
        optimizer = self.build_optimizer(cfg, model)
        data_loader, self._train_sampler = self.build_resumable_train_loader(cfg)
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            find_unused_parameters=cfg.MODEL.DDP_FIND_UNUSED_PARAMETERS,
        )

        use_amp = cfg.SOLVER.AMP.ENABLED
        if use_amp and not torch.cuda.is_available():
            logger.warning("SOLVER.AMP.ENABLED is ignored: AMP needs a CUDA device (training on CPU "
                           "in float32)")
            use_amp = False
        if use_amp:
            dtype = _amp_dtype(cfg)
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            self._trainer = AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler,
                                       precision=dtype)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.ema = None
        if cfg.MODEL.EMA.ENABLED:
            self.ema = ModelEMA(model, decay=cfg.MODEL.EMA.DECAY, start_iter=cfg.MODEL.EMA.START_ITER)
        extra = {"ema": self.ema} if self.ema is not None else {}
        if self._train_sampler is not None:
            extra["sampler"] = self._train_sampler
        proxy = weakref.proxy(self)
        extra["rng"] = RNGState(fallback_seed=cfg.SEED, iteration=lambda: proxy.iter)
        self.checkpointer = SoMACheckpointer(model, cfg.OUTPUT_DIR, trainer=proxy, **extra)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # ---- builders ------------------------------------------------------------------------------
    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_resumable_train_loader(cls, cfg: CfgNode):
        """The training loader and the `ResumableSampler` inside it (see `data.sampler`)."""
        kwargs = build_detection_train_loader.from_config(
            cfg, mapper=build_mapper(cfg, True, default_mapper_name(cfg)))
        return build_resumable_train_loader(**kwargs)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return cls.build_resumable_train_loader(cfg)[0]

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=build_mapper(cfg, False, default_mapper_name(cfg)))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
                        ) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_dg_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self) -> list[hooks.HookBase]:
        ret = super().build_hooks()
        cfg = self.cfg
        anneal = AnnealWeightDecayHook(
            schedule=cfg.SOLVER.WEIGHT_DECAY_SCHEDULE,
            end=cfg.SOLVER.WEIGHT_DECAY_END,
            max_iter=cfg.SOLVER.MAX_ITER,
        )
        ret.insert(1, anneal)  # next to the LR scheduler hook, before checkpoints and writers
        if self.ema is not None:
            ret.insert(2, EMAHook(self.ema))

        def test_and_save_results() -> OrderedDict:
            self._last_eval_results = self.test_with_ema()
            return self._last_eval_results

        def replace(h: hooks.HookBase) -> hooks.HookBase:
            # evaluation must see the EMA weights when enabled, leave the RNG alone and skip a
            # failed run; writers follow SOLVER.LOG_PERIOD
            if isinstance(h, hooks.EvalHook):
                return SafeEvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results)
            if isinstance(h, hooks.PeriodicWriter):
                return hooks.PeriodicWriter(self.build_writers(), period=cfg.SOLVER.LOG_PERIOD)
            return h

        return [replace(h) for h in ret]

    # ---- evaluation ----------------------------------------------------------------------------
    def test_with_ema(self) -> OrderedDict:
        if self.ema is None:
            return self.test(self.cfg, self.model)
        with self.ema.swap_into(self.model):
            return self.test(self.cfg, self.model)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None) -> OrderedDict:
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        results: OrderedDict = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            loader = cls.build_test_loader(cfg, dataset_name)
            evaluator = evaluators[idx] if evaluators else cls.build_evaluator(cfg, dataset_name)
            res = inference_on_dataset(model, loader, evaluator)
            results[dataset_name] = res
            if comm.is_main_process():
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                print_csv_format(res)
        if comm.is_main_process() and results:
            source = None
            if cfg.DATASETS.TRAIN:
                source = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("domain", None)
            table = DGTable.from_results(results, run_name=dg_run_name(cfg), source_domain=source)
            table.write(cfg.OUTPUT_DIR)
            table.log_to_storage()
            logger.info("Domain-generalization results:\n%s", table.to_markdown())
        if cfg.DATASETS.TEST_CORRUPTIONS and results:  # robustness: every corruption x severity
            evaluate_corruptions(cfg, model, results, cls.build_evaluator)
        return results

    def check_ranks_agree(self) -> None:
        """Raise when DDP ranks ended with different trainable weights (a silent sync failure)."""
        if comm.get_world_size() == 1:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        checksum = [float(p.detach().double().sum()) for p in params]
        gathered = comm.all_gather(checksum)
        if any(g != gathered[0] for g in gathered[1:]):
            raise RuntimeError("DDP ranks hold different trainable weights after training")
        logger.info("All %d ranks hold identical trainable weights (checksum %.12e)",
                    len(gathered), sum(checksum))

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's resume, plus the data stream continuing at `start_iter` (RNG states are
        restored by the checkpointer's `rng` entry)."""
        super().resume_or_load(resume=resume)
        if self._train_sampler is not None:
            per_rank = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            self._train_sampler.set_start_iter(self.start_iter, per_rank)

    def train(self) -> OrderedDict | None:
        """Train; on a non-finite loss, stop without writing anything after the divergence."""
        try:
            result = super().train()
        except FloatingPointError as e:
            last = (self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint()
                    else "none")
            raise FloatingPointError(
                f"{e}\nTraining stopped at iteration {self.iter}: no checkpoint, adapter or "
                f"evaluation was written after the divergence. Last good checkpoint: {last} "
                "(lower SOLVER.BASE_LR or check the data, then --resume)."
            ) from e
        self.check_ranks_agree()
        if comm.is_main_process():
            path = os.path.join(self.cfg.OUTPUT_DIR, ADAPTER_FILENAME)
            if self.ema is not None and self.ema.started:  # the EMA is what evaluation scored
                with self.ema.swap_into(self.model):
                    atomic_torch_save(export_adapter(self.model, self.cfg.dump()), path)
            else:
                atomic_torch_save(export_adapter(self.model, self.cfg.dump()), path)
            logger.info("Saved the adapter-only checkpoint to %s", path)
        return result
