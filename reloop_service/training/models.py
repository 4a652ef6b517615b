"""CTR models: DNN, DeepFM, DCNv2 and a logistic-regression baseline over one shared feature-embedding layer.

Every model maps a ``FeatureBatch`` to logits [B], is sized from keyword arguments (kept in
``model_args`` so a checkpoint can rebuild it without any config), and lists its row-sparse
embedding table (one fused table for all fields, ``layers.FieldEmbedding``) in ``sparse_tables()``;
the trainer gives it to ``optim.RowSparseAdam`` and the remaining parameters to a dense optimizer.
Models never build optimizers.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from reloop_service.training.layers import (
    MLP,
    CrossNetV2,
    FieldEmbedding,
    FMInteraction,
    NumericEmbedding,
    RowSparseEmbedding,
)

if TYPE_CHECKING:
    from reloop_service.data.spec import FeatureSpec
    from reloop_service.data.transforms import FeatureBatch

DEFAULT_EMBEDDING_DIM = 16
DEFAULT_HIDDEN: tuple[int, ...] = (256, 128, 64)


def _hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    """Validated MLP widths."""
    widths = tuple(int(h) for h in hidden)
    if not widths or any(h < 1 for h in widths):
        raise ValueError(f"mlp hidden sizes must be positive integers, got {list(hidden)}")
    return widths


class CTRModel(nn.Module):
    """Base class: field embeddings from the spec plus the model's own head.

    ``forward(batch) -> FloatTensor [B]`` logits. Subclasses implement ``head``.
    """

    name: ClassVar[str]

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
        extra_dims: int = 0,
    ) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.n_num = len(spec.numeric)
        self.embedding = FieldEmbedding(
            [f.buckets for f in spec.categorical], [f.buckets for f in spec.multi], embedding_dim + extra_dims
        )
        self.n_fields = self.embedding.num_fields
        if self.n_fields + self.n_num == 0:
            raise ValueError("feature spec has no categorical, multi-valued or numeric fields")
        self._model_args: dict[str, Any] = {"embedding_dim": embedding_dim}

    @property
    def model_args(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this model with ``build_model(name, spec, **model_args)``."""
        return dict(self._model_args)

    def sparse_tables(self) -> list[RowSparseEmbedding]:
        """Embedding tables updated row-sparsely (by ``optim.RowSparseAdam``): the one fused table."""
        return self.embedding.tables()

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter outside the sparse tables (for a dense optimizer)."""
        sparse = {id(t.weight) for t in self.sparse_tables()}
        return [p for p in self.parameters() if id(p) not in sparse and p.requires_grad]

    def output_bias(self) -> Tensor:
        """The bias added to every logit (the final layer's): a cold start sets it to logit(CTR)."""
        out = getattr(self, "out", None)
        bias = out.bias if isinstance(out, nn.Linear) else getattr(self, "bias", None)
        if not isinstance(bias, Tensor):
            raise TypeError(f"{type(self).__name__} has no output bias")
        return bias

    def forward(self, batch: FeatureBatch) -> Tensor:
        emb = self.embedding(batch.cat, batch.multi)  # [B, F, D(+extra)]
        return self.head(emb, batch.num.to(torch.float32))

    def head(self, emb: Tensor, num: Tensor) -> Tensor:
        """emb [B, F, D'], num [B, n_num] -> logits [B]."""
        raise NotImplementedError


class DNN(CTRModel):
    """Embeddings flattened and concatenated with numeric features, then an MLP.

    [B, F, D] + [B, n_num] -> [B, F·D + n_num] -> MLP -> [B, hidden[-1]] -> Linear -> [B].
    """

    name = "dnn"

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spec, embedding_dim=embedding_dim)
        widths = _hidden(hidden)
        self.mlp = MLP(self.n_fields * embedding_dim + self.n_num, widths, dropout)
        self.out = nn.Linear(self.mlp.out_dim, 1)
        self._model_args.update(hidden=list(widths), dropout=float(dropout))

    def head(self, emb: Tensor, num: Tensor) -> Tensor:
        # no numeric fields: the flattened embeddings as they are (a cat would copy them, 2 MiB a batch)
        x = emb.flatten(1) if num.shape[1] == 0 else torch.cat([emb.flatten(1), num], dim=1)
        return self.out(self.mlp(x)).squeeze(-1)


class DeepFM(CTRModel):
    """FM (first + second order) plus a DNN over the same embeddings.

    Every categorical table carries D + 1 columns: D for the factors, the last for the first-order
    weight, so one lookup serves both. Numeric fields get a factor vector and a linear weight.
    logit = bias + Σ first-order + FM([B, F + n_num, D]) + MLP([B, F·D + n_num]).
    """

    name = "deepfm"

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spec, embedding_dim=embedding_dim, extra_dims=1)
        widths = _hidden(hidden)
        self.num_embedding = NumericEmbedding(self.n_num, embedding_dim)
        self.num_linear = nn.Linear(self.n_num, 1) if self.n_num else None
        self.fm = FMInteraction()
        self.mlp = MLP(self.n_fields * embedding_dim + self.n_num, widths, dropout)
        self.out = nn.Linear(self.mlp.out_dim, 1)
        self._model_args.update(hidden=list(widths), dropout=float(dropout))

    def head(self, emb: Tensor, num: Tensor) -> Tensor:
        factors, first = emb[..., :-1], emb[..., -1]  # [B, F, D], [B, F]
        v = torch.cat([factors, self.num_embedding(num)], dim=1)  # [B, F + n_num, D]
        linear = first.sum(dim=1)
        if self.num_linear is not None:
            linear = linear + self.num_linear(num).squeeze(-1)
        deep = self.out(self.mlp(torch.cat([factors.flatten(1), num], dim=1))).squeeze(-1)
        return linear + self.fm(v) + deep


class DCNv2(CTRModel):
    """DCN-v2 (parallel): a cross network and an MLP over x0 = [flattened embeddings, numerics].

    x0 [B, d] -> CrossNetV2 -> [B, d]; x0 -> MLP -> [B, hidden[-1]]; concat -> Linear -> [B].
    """

    name = "dcnv2"

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = 0.0,
        cross_layers: int = 3,
    ) -> None:
        super().__init__(spec, embedding_dim=embedding_dim)
        if cross_layers < 1:
            raise ValueError(f"cross_layers must be at least 1, got {cross_layers}")
        widths = _hidden(hidden)
        in_dim = self.n_fields * embedding_dim + self.n_num
        self.cross = CrossNetV2(in_dim, cross_layers)
        self.mlp = MLP(in_dim, widths, dropout)
        self.out = nn.Linear(in_dim + self.mlp.out_dim, 1)
        self._model_args.update(hidden=list(widths), dropout=float(dropout), cross_layers=int(cross_layers))

    def head(self, emb: Tensor, num: Tensor) -> Tensor:
        x0 = torch.cat([emb.flatten(1), num], dim=1)
        return self.out(torch.cat([self.cross(x0), self.mlp(x0)], dim=1)).squeeze(-1)


class LogisticRegression(CTRModel):
    """Logistic regression: one weight per hashed value (a 1-wide embedding), summed, plus numerics.

    [B, F, 1] + [B, n_num] -> bias + Σ_F w + Linear(num) -> [B]. The baseline every CTR model must
    beat. ``embedding_dim``, ``hidden`` and ``dropout`` are accepted and ignored so that the one
    model config a cycle builds (``{"embedding_dim", "hidden", "dropout"}``) works for every model.
    """

    name = "lr"

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 1,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spec, embedding_dim=1)
        self.num_linear = nn.Linear(self.n_num, 1) if self.n_num else None
        self.bias = nn.Parameter(torch.zeros(1))

    def head(self, emb: Tensor, num: Tensor) -> Tensor:
        logit = emb.sum(dim=(1, 2)) + self.bias
        if self.num_linear is not None:
            logit = logit + self.num_linear(num).squeeze(-1)
        return logit


MODELS: dict[str, type[CTRModel]] = {"dnn": DNN, "deepfm": DeepFM, "dcnv2": DCNv2, "lr": LogisticRegression}


def build_model(name: str, spec: FeatureSpec, **model_args: Any) -> CTRModel:
    """Build model ``name`` for ``spec``; unknown names or arguments fail with the valid choices."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "spec"}
    unknown = sorted(set(model_args) - accepted)
    if unknown:
        raise ValueError(
            f"model {name!r} has no argument(s) {', '.join(unknown)} "
            f"(arguments: {', '.join(sorted(accepted))})"
        )
    return cls(spec, **model_args)
