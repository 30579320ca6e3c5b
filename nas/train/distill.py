"""Knowledge distillation with Hinton's soft targets (Hinton, Vinyals & Dean 2015).

Soft targets are the teacher's softmax at temperature T, q_i = exp(z_i/T) / sum_j exp(z_j/T)
(survey eq. 2-28; T = 1 is the plain softmax, Hinton found T = 2..4 to work well). The
soft loss is the KL divergence from the teacher's to the student's softened distribution,
multiplied by T^2 so that its gradients keep the same scale as the hard loss when T
changes: d(loss)/dz_i = T * (q_i(student) - q_i(teacher)) / batch.
"""

import torch
import torch.nn.functional as F


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = 4.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r}: expected a positive number")
    t = float(temperature)
    log_q_student = F.log_softmax(student_logits / t, dim=1)
    log_q_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_q_student, log_q_teacher, reduction="batchmean", log_target=True) * (t * t)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.9,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * soft-target loss + (1 - alpha) * cross-entropy with the true labels.

    Hinton weights the hard-label term less (the survey notes a smaller weight on it
    helps); `alpha` in [0, 1] is the soft term's share.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}: expected 0 <= alpha <= 1")
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0.0:
        return hard
    return alpha * soft_target_loss(student_logits, teacher_logits, temperature) + (1.0 - alpha) * hard
