#!/usr/bin/env python3
"""Backtest statistics computed independently with scipy, for tests/it/backtest.rs.

Prints a JSON list: per fixed exception sequence, Kupiec's POF likelihood
ratio and p-value (chi2, 1 dof), Christoffersen's independence and
conditional-coverage ratios and p-values (chi2, 1 and 2 dof), the binomial
probability P(X <= x) and the Basel zone read from it. Limits 0*ln(0) = 0
come from scipy.special.xlogy, not from riskhost's code.
"""
import json

from scipy.special import xlogy
from scipy.stats import binom, chi2


def spread(n, count):
    step = n // count
    return [i % step == step // 2 and i // step < count for i in range(n)]


def clustered(n, start, count):
    return [start <= i < start + count for i in range(n)]


def statistics(name, exceptions, confidence):
    p = 1.0 - confidence
    t = len(exceptions)
    x = sum(exceptions)
    rate = x / t
    kupiec_lr = -2.0 * ((xlogy(t - x, 1 - p) + xlogy(x, p)) - (xlogy(t - x, 1 - rate) + xlogy(x, rate)))
    kupiec_lr = max(kupiec_lr, 0.0)

    n = {(a, b): 0 for a in (0, 1) for b in (0, 1)}
    for today, tomorrow in zip(exceptions, exceptions[1:]):
        n[(int(today), int(tomorrow))] += 1
    n00, n01, n10, n11 = n[(0, 0)], n[(0, 1)], n[(1, 0)], n[(1, 1)]
    pi0 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi1 = n11 / (n10 + n11) if n10 + n11 else 0.0
    pi = (n01 + n11) / (n00 + n01 + n10 + n11)
    null = xlogy(n00 + n10, 1 - pi) + xlogy(n01 + n11, pi)
    alternative = xlogy(n00, 1 - pi0) + xlogy(n01, pi0) + xlogy(n10, 1 - pi1) + xlogy(n11, pi1)
    lr_ind = max(-2.0 * (null - alternative), 0.0)
    lr_cc = kupiec_lr + lr_ind
    cdf = binom.cdf(x, t, p)
    zone = "green" if cdf < 0.95 else ("yellow" if cdf < 0.9999 else "red")
    return {
        "name": name,
        "confidence": confidence,
        "exceptions": exceptions,
        "kupiec_lr": kupiec_lr,
        "kupiec_p": float(chi2.sf(kupiec_lr, 1)),
        "lr_ind": lr_ind,
        "p_ind": float(chi2.sf(lr_ind, 1)),
        "lr_cc": lr_cc,
        "p_cc": float(chi2.sf(lr_cc, 2)),
        "binom_cdf": float(cdf),
        "zone": zone,
    }


FIXTURES = [
    statistics("T=250 x=8 spread", spread(250, 8), 0.99),
    statistics("T=250 x=8 clustered", clustered(250, 100, 8), 0.99),
    statistics("T=250 x=0", [False] * 250, 0.99),
    statistics("T=250 x=T", [True] * 250, 0.99),
    statistics("T=250 x=4 (last green)", spread(250, 4), 0.99),
    statistics("T=250 x=5 (first yellow)", spread(250, 5), 0.99),
    statistics("T=250 x=10 (first red)", spread(250, 10), 0.99),
    statistics("T=500 x=12 two clusters", [a or b for a, b in zip(clustered(500, 40, 6), clustered(500, 300, 6))], 0.99),
    statistics("T=100 x=9 at 95%", spread(100, 9), 0.95),
    statistics("T=3 x=1", [False, True, False], 0.99),
]

print(json.dumps(FIXTURES))
