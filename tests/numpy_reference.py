"""An independent NumPy re-derivation of Algorithms 1 and 2, in float64, written from the
paper's pseudo-code (not from bnrepro's code): the reference the tests compare against."""

import numpy as np


def bn_train(x, gamma, beta, axes, eps):
    """Algorithm 1: returns y, mu_B, sigma^2_B (biased)."""
    x = np.asarray(x, np.float64)
    m = np.prod([x.shape[a] for a in axes])
    mu = x.sum(axis=axes, keepdims=True) / m
    var = ((x - mu) ** 2).sum(axis=axes, keepdims=True) / m
    xhat = (x - mu) / np.sqrt(var + eps)
    y = gamma * xhat + beta  # gamma, beta broadcast over the trailing feature axes
    return y, np.squeeze(mu, axes), np.squeeze(var, axes)


def bn_train_backward(x, gamma, dy, eps):
    """Sec. 3's chain rule through Algorithm 1 over one mini-batch (axis 0), in float64: dl/dx, dl/dgamma and
    dl/dbeta from dl/dy = `dy`."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    m = x.shape[0]
    mu, var = x.mean(0), x.var(0)
    xhat = (x - mu) / np.sqrt(var + eps)
    dxhat = dy * gamma
    dvar = np.sum(dxhat * (x - mu), 0) * -0.5 * (var + eps) ** -1.5
    dmu = np.sum(-dxhat / np.sqrt(var + eps), 0) + dvar * np.sum(-2.0 * (x - mu), 0) / m
    return dxhat / np.sqrt(var + eps) + dvar * 2.0 * (x - mu) / m + dmu / m, np.sum(dy * xhat, 0), np.sum(dy, 0)


def bn_population(batch_means, batch_vars, m):
    """Algorithm 2, steps 8-9: E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma^2_B]."""
    return np.mean(batch_means, axis=0), m / (m - 1) * np.mean(batch_vars, axis=0)


def bn_inference(x, gamma, beta, mean, var, eps):
    """Algorithm 2, step 11: y = gamma/sqrt(Var+eps) x + (beta - gamma E[x]/sqrt(Var+eps))."""
    scale = gamma / np.sqrt(var + eps)
    return scale * np.asarray(x, np.float64) + (beta - scale * mean)
