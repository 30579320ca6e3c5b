"""Step 1 of compound scaling: alpha, beta, gamma at phi = 1 under the constraint, by a small search.

The constraint alpha * beta^2 * gamma^2 = target (alpha, beta, gamma >= 1) leaves two degrees
of freedom. The search draws them so that every candidate meets it exactly, and nothing is
rejected or trained in vain: alpha in [1, target] and the share u in [0, 1] of what is left,
target / alpha, that goes to width (beta^2) rather than resolution (gamma^2):

    beta = (target / alpha)^(u / 2),  gamma = (target / alpha)^((1 - u) / 2)

Each candidate is the base scaled at phi = 1 and scored by `evaluate` (the caller's training
recipe; higher is better). Optuna's TPE, seeded, in memory.
"""

import sys
from collections.abc import Callable

import optuna

from nas.space.scaling import DEFAULT_TARGET

STEP = 0.05  # grid of alpha and of the width share


def coefficients_of(alpha: float, share: float, target: float = DEFAULT_TARGET) -> tuple[float, float, float]:
    """(alpha, beta, gamma) on the constraint surface, rounded to 3 decimals."""
    rest = target / alpha
    return round(alpha, 3), round(rest ** (share / 2), 3), round(rest ** ((1 - share) / 2), 3)


def search_coefficients(evaluate: Callable[[tuple[float, float, float]], float], trials: int, seed: int = 0,
                        target: float = DEFAULT_TARGET, log=sys.stderr) -> tuple[tuple[float, float, float], list]:
    """(best coefficients, [(coefficients, score), ...] in trial order)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    history = []

    def objective(trial):
        coeffs = coefficients_of(trial.suggest_float("alpha", 1.0, target, step=STEP),
                                 trial.suggest_float("width_share", 0.0, 1.0, step=STEP), target)
        trial.set_user_attr("coefficients", list(coeffs))
        score = evaluate(coeffs)
        history.append((coeffs, score))
        print(f"nas scale: coefficients {trial.number + 1}/{trials}: alpha={coeffs[0]:g} beta={coeffs[1]:g} "
              f"gamma={coeffs[2]:g} -> {score:.4f}", file=log, flush=True)
        return score

    study.optimize(objective, n_trials=trials)
    return tuple(study.best_trial.user_attrs["coefficients"]), history
