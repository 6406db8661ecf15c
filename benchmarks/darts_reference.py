"""A re-implementation of the DARTS reference code (search network, architect, evaluation
network), written from the paper and the reference code's description, for the benchmark
(darts_step.py) and the parity tests to compare archc against. Plain PyTorch, no archc.

What it follows (Liu et al. 2019, the `cnn/` code of quark0/darts):
- operations: ReLUConvBN, DilConv, SepConv (two stacked depthwise + pointwise), Identity,
  Zero (strided: the input subsampled then times 0), FactorizedReduce (two 1x1 stride-2
  convs, one on the input shifted by a pixel, concatenated, BN);
- MixedOp: every primitive on the edge, pooling followed by a non-affine BN, summed with
  the softmax weights; the search cell's batch norms are non-affine;
- the search Network: stem conv 3C + BN, cells with reduction at layers//3 and 2*layers//3,
  preprocessing by FactorizedReduce after a reduction cell else ReLUConvBN 1x1, 4 steps,
  the concatenation of the 4 intermediate nodes; α = 1e-3 * randn(14, 8) per cell kind,
  plain tensors beside the module's parameters, softmax computed once per cell;
- the Architect: Adam(α, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3); first order:
  backward of the validation loss; second order: a copy of the model after one virtual
  SGD step (momentum buffer, weight decay), its validation loss, and the finite-difference
  Hessian-vector product with R = 0.01 / ||v||;
- the evaluation NetworkCIFAR (affine BNs, no BN after pooling, AuxiliaryHeadCIFAR),
  parameters counted as the reference's `count_parameters_in_MB` does (auxiliary head left out).

    python benchmarks/darts_reference.py     # prints the parameter counts
"""
from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5"]

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")
DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5])
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])


# -- operations ----------------------------------------------------------------------

class ReLUConvBN(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                                nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False), nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, 1, padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, c_in, c_out, affine=True):
        super().__init__()
        assert c_out % 2 == 0
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}


# -- the search network ------------------------------------------------------------------

class MixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = OPS[primitive](C, stride, False)
            if "pool" in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class SearchCell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(MixedOp(C, stride))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for i in range(self._steps):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class SearchNetwork(nn.Module):
    def __init__(self, C=16, num_classes=10, layers=8, steps=4, multiplier=4, stem_multiplier=3, in_channels=3):
        super().__init__()
        self._C, self._num_classes, self._layers = C, num_classes, layers
        self._steps, self._multiplier, self._stem_multiplier = steps, multiplier, stem_multiplier
        self._in_channels = in_channels
        self._criterion = nn.CrossEntropyLoss()
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            if i in [layers // 3, 2 * layers // 3]:
                C_curr *= 2
                reduction = True
            else:
                reduction = False
            cell = SearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self._initialize_alphas()

    def _initialize_alphas(self):
        k = sum(1 for i in range(self._steps) for _ in range(2 + i))
        n = len(PRIMITIVES)
        self.alphas_normal = (1e-3 * torch.randn(k, n)).requires_grad_(True)
        self.alphas_reduce = (1e-3 * torch.randn(k, n)).requires_grad_(True)
        self._arch_parameters = [self.alphas_normal, self.alphas_reduce]

    def arch_parameters(self):
        return self._arch_parameters

    def new(self):
        model_new = SearchNetwork(self._C, self._num_classes, self._layers, self._steps, self._multiplier,
                                  self._stem_multiplier, self._in_channels)
        for x, y in zip(model_new.arch_parameters(), self.arch_parameters()):
            x.data.copy_(y.data)
        return model_new

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            weights = F.softmax(self.alphas_reduce if cell.reduction else self.alphas_normal, dim=-1)
            s0, s1 = s1, cell(s0, s1, weights)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def _loss(self, x, target):
        return self._criterion(self(x), target)


class Architect:
    """The architecture step: α's Adam on the validation loss, first or second order."""

    def __init__(self, model: SearchNetwork, momentum=0.9, weight_decay=3e-4, arch_lr=3e-4,
                 arch_weight_decay=1e-3):
        self.network_momentum, self.network_weight_decay = momentum, weight_decay
        self.model = model
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999),
                                          weight_decay=arch_weight_decay)

    def _compute_unrolled_model(self, x, target, eta, network_optimizer):
        loss = self.model._loss(x, target)
        theta = torch.cat([v.reshape(-1) for v in self.model.parameters()]).detach()
        try:
            moment = torch.cat([network_optimizer.state[v]["momentum_buffer"].reshape(-1)
                                for v in self.model.parameters()]) * self.network_momentum
        except KeyError:
            moment = torch.zeros_like(theta)
        dtheta = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(self.model.parameters()))])
        dtheta = dtheta.detach() + self.network_weight_decay * theta
        return self._construct_model_from_theta(theta - eta * (moment + dtheta))

    def _construct_model_from_theta(self, theta):
        model_new = self.model.new()
        model_dict = self.model.state_dict()
        params, offset = {}, 0
        for k, v in self.model.named_parameters():
            n = v.numel()
            params[k] = theta[offset: offset + n].view(v.size())
            offset += n
        model_dict.update(params)
        model_new.load_state_dict(model_dict)
        return model_new

    def step(self, x_train, y_train, x_valid, y_valid, eta, network_optimizer, unrolled: bool):
        self.optimizer.zero_grad()
        if unrolled:
            self._backward_step_unrolled(x_train, y_train, x_valid, y_valid, eta, network_optimizer)
        else:
            self.model._loss(x_valid, y_valid).backward()
        self.optimizer.step()

    def _backward_step_unrolled(self, x_train, y_train, x_valid, y_valid, eta, network_optimizer):
        unrolled_model = self._compute_unrolled_model(x_train, y_train, eta, network_optimizer)
        unrolled_model._loss(x_valid, y_valid).backward()
        dalpha = [v.grad for v in unrolled_model.arch_parameters()]
        vector = [v.grad.detach() for v in unrolled_model.parameters()]
        implicit = self._hessian_vector_product(vector, x_train, y_train)
        for g, ig in zip(dalpha, implicit):
            g.sub_(eta * ig)
        for v, g in zip(self.model.arch_parameters(), dalpha):
            if v.grad is None:
                v.grad = g.detach().clone()
            else:
                v.grad.copy_(g)

    def _hessian_vector_product(self, vector, x, target, r=1e-2):
        R = r / torch.cat([v.reshape(-1) for v in vector]).norm()
        with torch.no_grad():
            for p, v in zip(self.model.parameters(), vector):
                p.add_(v, alpha=float(R))
        grads_p = torch.autograd.grad(self.model._loss(x, target), self.model.arch_parameters())
        with torch.no_grad():
            for p, v in zip(self.model.parameters(), vector):
                p.sub_(v, alpha=2 * float(R))
        grads_n = torch.autograd.grad(self.model._loss(x, target), self.model.arch_parameters())
        with torch.no_grad():
            for p, v in zip(self.model.parameters(), vector):
                p.add_(v, alpha=float(R))
        return [(x - y).div_(2 * R) for x, y in zip(grads_p, grads_n)]


def search_step(model: SearchNetwork, architect: Architect, optimizer, x_train, y_train, x_valid, y_valid,
                lr: float, unrolled: bool = False, grad_clip: float = 5.0):
    """One step of the reference's train_search.py: the architecture step, then the weight step."""
    model.train()
    architect.step(x_train, y_train, x_valid, y_valid, lr, optimizer, unrolled=unrolled)
    optimizer.zero_grad()
    loss = model._loss(x_train, y_train)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss


# -- the evaluation network -------------------------------------------------------------------

class EvalCell(nn.Module):
    def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.preprocess0 = FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        names, indices = zip(*(genotype.reduce if reduction else genotype.normal))
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self._steps = len(names) // 2
        self._concat = concat
        self.multiplier = len(concat)
        self._ops = nn.ModuleList()
        for name, index in zip(names, indices):
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(OPS[name](C, stride, True))
        self._indices = indices

    def forward(self, s0, s1):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            h1 = self._ops[2 * i](states[self._indices[2 * i]])
            h2 = self._ops[2 * i + 1](states[self._indices[2 * i + 1]])
            states.append(h1 + h2)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class NetworkCIFAR(nn.Module):
    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__()
        self._layers, self._auxiliary = layers, auxiliary
        C_curr = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in [layers // 3, 2 * layers // 3]
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_to_auxiliary = C_prev
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1)), logits_aux


def count_parameters(model: nn.Module) -> int:
    """The reference's count: every parameter but the auxiliary head's."""
    return sum(v.numel() for name, v in model.named_parameters() if "auxiliary" not in name)


def main() -> None:
    net = SearchNetwork(16, 10, 8)
    print("search network C=16, 8 layers: weights", sum(p.numel() for p in net.parameters()),
          "architecture parameters", sum(a.numel() for a in net.arch_parameters()))
    for name, g in (("DARTS_V1", DARTS_V1), ("DARTS_V2", DARTS_V2)):
        m = NetworkCIFAR(36, 10, 20, True, g)
        print(f"{name} C=36, 20 layers: {count_parameters(m):,} without the auxiliary head, "
              f"{sum(p.numel() for p in m.parameters()):,} with it")


if __name__ == "__main__":
    main()
