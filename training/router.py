"""The SafeRoute router's training: BCE (+ the Bayesian KL) on the student's frozen features.

The router (d -> h -> h -> 1 MLP, `modeling_saferoute.SafeRouteRouter`) is optionally Bayesian:
mean-field Gaussian weights, prior sigma 0.1, loss BCE + 0.01 KL (per-parameter mean, torchbnn's
'mean' reduction), the posterior mean exported into the plain architecture. Training draws
class-balanced batches with replacement (`sampling.balanced_weights`).
"""

import copy
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from evaluation.metrics import average_precision

from .sampling import balanced_weights


class BayesianLinear(nn.Module):
    """Mean-field Gaussian linear layer (weights ~ N(mu, sigma^2)); the mean is used in eval mode."""

    def __init__(self, linear, prior_sigma, sigma_init=None):
        super().__init__()
        self.prior_sigma = prior_sigma
        log_sigma = math.log(sigma_init or prior_sigma)
        self.weight_mu = nn.Parameter(linear.weight.detach().clone())
        self.bias_mu = nn.Parameter(linear.bias.detach().clone())
        self.weight_log_sigma = nn.Parameter(torch.full_like(linear.weight, log_sigma))
        self.bias_log_sigma = nn.Parameter(torch.full_like(linear.bias, log_sigma))

    def forward(self, x):
        weight, bias = self.weight_mu, self.bias_mu
        if self.training:
            weight = weight + torch.exp(self.weight_log_sigma) * torch.randn_like(weight)
            bias = bias + torch.exp(self.bias_log_sigma) * torch.randn_like(bias)
        return nn.functional.linear(x, weight, bias)

    def kl(self):
        """(sum of KL(q || N(0, prior^2)) over the parameters, number of parameters)."""
        total = 0.0
        for mu, log_sigma in ((self.weight_mu, self.weight_log_sigma), (self.bias_mu, self.bias_log_sigma)):
            total = total + (math.log(self.prior_sigma) - log_sigma + (torch.exp(2 * log_sigma) + mu**2) / (2 * self.prior_sigma**2) - 0.5).sum()
        return total, self.weight_mu.numel() + self.bias_mu.numel()


def bayesian_copy(router, prior_sigma, sigma_init=None):
    """A copy of the router whose Linear layers are Bayesian (means start at the router's weights)."""
    bayes = copy.deepcopy(router)
    for i, layer in enumerate(bayes.layers):
        if isinstance(layer, nn.Linear):
            bayes.layers[i] = BayesianLinear(layer, prior_sigma, sigma_init)
    return bayes


def mean_kl(module):
    """KL per parameter, averaged over all Bayesian parameters (torchbnn's 'mean' reduction)."""
    total, count = 0.0, 0
    for layer in module.modules():
        if isinstance(layer, BayesianLinear):
            kl, n = layer.kl()
            total, count = total + kl, count + n
    return total / max(count, 1)


def export_posterior_mean(bayes, router):
    """Write the posterior means into the plain router (same architecture as the exported model)."""
    state = {}
    for i, layer in enumerate(bayes.layers):
        if isinstance(layer, BayesianLinear):
            state[f"layers.{i}.weight"], state[f"layers.{i}.bias"] = layer.weight_mu.detach(), layer.bias_mu.detach()
        else:
            state.update({f"layers.{i}.{k}": v.detach() for k, v in layer.state_dict().items()})
    router.load_state_dict(state)
    return router


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
KEEP = ("best", "final")


def router_steps(args, n_train):
    """Optimizer steps of the router: `num_epochs` passes of `n_train` balanced draws (SafeRoute's
    schedule: an epoch draws as many rows as the training set holds), else `max_steps`."""
    if args.num_epochs:
        return max(1, math.ceil(args.num_epochs * math.ceil(n_train / args.batch_size)))
    return args.max_steps


def fit_router(router, train_x, train_t, val_x, val_t, args):
    """Train the router (balanced sampler, BCE [+ KL], Adam or AdamW, warm-up + linear decay);
    keep the best router on validation (AUPRC of t) or the final one (`args.keep`)."""
    torch.manual_seed(args.seed)
    net = bayesian_copy(router, args.prior_sigma, args.posterior_sigma_init) if args.bayesian else router
    steps = router_steps(args, len(train_t))
    sampler = WeightedRandomSampler(balanced_weights(train_t.long()), steps * args.batch_size, replacement=True, generator=torch.Generator().manual_seed(args.seed))
    loader = DataLoader(TensorDataset(train_x, train_t.float()), batch_size=args.batch_size, sampler=sampler)
    optimizer = OPTIMIZERS[args.optimizer](net.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    warmup = args.warmup_steps if args.warmup_steps >= 1 else args.warmup_steps * steps
    if warmup > 0.2 * steps:
        warmup = 0.1 * steps
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup), steps)
    best, history = (-1.0, None, 0), []
    bar = tqdm(loader, desc="router", total=steps)
    for step, (x, t) in enumerate(bar, start=1):
        net.train()
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), t)
        if args.bayesian:
            loss = loss + args.kl_weight * mean_kl(net)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % args.eval_steps == 0 or step == steps:
            net.eval()
            with torch.no_grad():
                val_scores = torch.sigmoid(net(val_x)).numpy()
                val_loss = float(nn.functional.binary_cross_entropy(torch.as_tensor(val_scores), val_t.float()))
            auprc = average_precision(val_t.numpy(), val_scores)
            history.append({"step": step, "loss": loss.item(), "val_bce": val_loss, "val_auprc": auprc})
            bar.set_postfix(loss=f"{loss.item():.4f}", val_auprc=f"{auprc:.3f}")
            key = auprc if not math.isnan(auprc) else -val_loss
            if args.keep == "final" or key > best[0] or best[1] is None:
                best = (key, copy.deepcopy(net.state_dict()), step)
    net.load_state_dict(best[1])
    if args.bayesian:
        export_posterior_mean(net, router)
    router.eval()
    best_auprc = next((h["val_auprc"] for h in history if h["step"] == best[2]), None)
    return router, {"steps": steps, "kept": args.keep, "kept_step": best[2], "validation_auprc": best_auprc,
                    "train_examples": len(train_t), "history": history}
