"""Training, evaluation, distillation and zero-cost proxies for candidate networks."""

from nas.train.distill import distillation_loss, soft_target_loss
from nas.train.evaluate import evaluate, measure_inference_ms
from nas.train.proxies import PROXIES, naswot, synflow
from nas.train.trainer import TrainingDiverged, TrainResult, train

__all__ = ["TrainResult", "TrainingDiverged", "train", "evaluate", "measure_inference_ms",
           "distillation_loss", "soft_target_loss", "naswot", "synflow", "PROXIES"]
