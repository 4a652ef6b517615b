"""Row-sparse Adam: touches only batch rows, matches dense Adam on them, checkpoints its state."""

from __future__ import annotations

import copy

import torch

from reloop_service.training.layers import RowSparseEmbedding, initial_rows
from reloop_service.training.optim import RowSparseAdam


def make_table(rows: int = 50, dim: int = 4) -> RowSparseEmbedding:
    torch.manual_seed(0)
    table = RowSparseEmbedding(rows, dim)
    table.materialize()  # every row has its initial value (tables start at zero, drawn on first touch)
    return table


def loss_of(out: torch.Tensor) -> torch.Tensor:
    target = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    return ((out - target) ** 2).sum()


def sparse_step(table: RowSparseEmbedding, opt: RowSparseAdam, ids: torch.Tensor) -> None:
    opt.zero_grad()
    loss_of(table(ids)).backward()
    opt.step()


def test_only_batch_rows_change_and_match_dense_adam() -> None:
    table = make_table()
    dense = torch.nn.Parameter(table.weight.detach().clone())
    dense_opt = torch.optim.Adam([dense], lr=0.05)
    opt = RowSparseAdam([table], lr=0.05)
    before = table.weight.detach().clone()
    ids = torch.tensor([[3, 7, 3], [11, 7, 40]])  # repeats: gradients of one id add up

    for _ in range(3):  # the same rows each step: lazy Adam equals dense Adam on them
        sparse_step(table, opt, ids)
        dense_opt.zero_grad()
        loss_of(torch.nn.functional.embedding(ids, dense)).backward()
        dense_opt.step()

    touched = torch.tensor([3, 7, 11, 40])
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(table.weight[untouched], before[untouched])  # bit-unchanged
    assert not torch.equal(table.weight[touched], before[touched])
    torch.testing.assert_close(table.weight[touched], dense.detach()[touched], rtol=0, atol=1e-6)
    exp_avg, exp_avg_sq = opt.moments(table)
    assert torch.equal(exp_avg[untouched], torch.zeros(46, 4))
    assert torch.equal(exp_avg_sq[untouched], torch.zeros(46, 4))
    assert opt.table_step(table) == 3


def test_step_is_dense_torch_adam_on_the_touched_rows_bit_for_bit() -> None:
    """Each step equals ``torch.optim.Adam`` (single-tensor) run on a dense copy of the touched rows.

    Fresh rows (drawn on first touch) and rows seen before, over steps with changing row sets;
    ids are unique within a step so each row's gradient is one term (no summation order to
    match). Untouched rows and moments stay zero; touched ones equal the reference exactly.
    """
    torch.manual_seed(0)
    n, dim, lr = 300, 16, 0.05
    table = RowSparseEmbedding(n, dim)
    opt = RowSparseAdam([table], lr=lr)
    weight = initial_rows(table.init_seed, torch.arange(n), dim)  # the reference's dense state
    exp_avg, exp_avg_sq = torch.zeros(n, dim), torch.zeros(n, dim)
    touched = torch.zeros(n, dtype=torch.bool)
    gen = torch.Generator().manual_seed(1)
    for step in range(12):
        ids = torch.randperm(n, generator=gen)[: 40 + 5 * step]  # overlaps earlier steps, adds new rows
        sparse_step(table, opt, ids)

        rows = weight[ids].clone().requires_grad_()
        loss_of(rows).backward()
        param = torch.nn.Parameter(weight[ids].clone())
        param.grad = rows.grad
        reference = torch.optim.Adam([param], lr=lr, foreach=False)
        reference.state[param] = {
            "step": torch.tensor(float(step)),
            "exp_avg": exp_avg[ids].clone(),
            "exp_avg_sq": exp_avg_sq[ids].clone(),
        }
        reference.step()
        weight[ids] = param.detach()
        exp_avg[ids] = reference.state[param]["exp_avg"]
        exp_avg_sq[ids] = reference.state[param]["exp_avg_sq"]
        touched[ids] = True

        m, v = opt.moments(table)
        assert torch.equal(table.weight[touched], weight[touched])
        assert torch.equal(m[touched], exp_avg[touched]) and torch.equal(v[touched], exp_avg_sq[touched])
        assert not table.weight[~touched].any() and not m[~touched].any() and not v[~touched].any()
    assert opt.table_step(table) == 12


def test_bias_correction_uses_the_table_step_like_torch_sparse_adam() -> None:
    """Rows first seen late are corrected with the table's step t, as torch.optim.SparseAdam does."""
    table = make_table()
    reference = torch.nn.Embedding.from_pretrained(table.weight.detach().clone(), freeze=False, sparse=True)
    torch_opt = torch.optim.SparseAdam(list(reference.parameters()), lr=0.1)
    opt = RowSparseAdam([table], lr=0.1)
    batches = [torch.tensor([1, 2])] * 5 + [torch.tensor([9, 1]), torch.tensor([9, 30, 9])]
    for ids in batches:
        sparse_step(table, opt, ids)
        torch_opt.zero_grad()
        loss_of(reference(ids)).backward()
        torch_opt.step()
    assert opt.table_step(table) == len(batches)
    torch.testing.assert_close(table.weight, reference.weight.detach(), rtol=0, atol=1e-6)
    # a row first seen at t = 6 moves by less than lr (no per-row restart of the correction)
    assert float((table.weight[30] - make_table().weight[30]).abs().max()) < 0.1


def test_tables_of_one_width_keep_their_own_step_counts() -> None:
    """Two tables updated together but a different number of times each use their own t."""
    torch.manual_seed(0)
    a, b = RowSparseEmbedding(20, 4), RowSparseEmbedding(20, 4)
    a_ref, b_ref = copy.deepcopy(a), copy.deepcopy(b)
    opt = RowSparseAdam([a, b], lr=0.05)
    opt_a, opt_b = RowSparseAdam([a_ref], lr=0.05), RowSparseAdam([b_ref], lr=0.05)
    for i in range(4):
        opt.zero_grad()
        loss = loss_of(a(torch.tensor([1, 2 + i])))
        if i >= 2:  # b joins at the third step: its t is 1, then 2
            loss = loss + loss_of(b(torch.tensor([5, 6])))
        loss.backward()
        opt.step()
        sparse_step(a_ref, opt_a, torch.tensor([1, 2 + i]))
        if i >= 2:
            sparse_step(b_ref, opt_b, torch.tensor([5, 6]))
    assert (opt.table_step(a), opt.table_step(b)) == (4, 2)
    torch.testing.assert_close(a.weight, a_ref.weight, rtol=0, atol=1e-7)
    torch.testing.assert_close(b.weight, b_ref.weight, rtol=0, atol=1e-7)


def test_state_with_per_row_steps_loads_with_the_largest_count_as_table_step() -> None:
    """State saved before per-table steps ([N, 2D + 1], last column = row step) still loads."""
    table = make_table()
    opt = RowSparseAdam([table], lr=0.05)
    sparse_step(table, opt, torch.tensor([1, 2, 3]))
    state = copy.deepcopy(opt.state_dict())
    moments = state["state"][0]["moments"]
    row_steps = torch.zeros(moments.shape[0], 1)
    row_steps[[1, 2, 3]] = torch.tensor([[7.0], [3.0], [1.0]])
    state["state"][0] = {"moments": torch.cat([moments, row_steps], dim=1)}  # the old layout
    again = RowSparseAdam([copy.deepcopy(table)], lr=0.05)
    again.load_state_dict(state)
    assert again.table_step(again._tables[0]) == 7
    assert torch.equal(torch.cat(again.moments(again._tables[0]), dim=1), moments)


def test_state_dict_round_trip_continues_identically() -> None:
    table = make_table()
    opt = RowSparseAdam([table], lr=0.05)
    sparse_step(table, opt, torch.tensor([1, 2, 3]))

    table2 = copy.deepcopy(table)
    opt2 = RowSparseAdam([table2], lr=0.05)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))

    for t, o in ((table, opt), (table2, opt2)):
        sparse_step(t, o, torch.tensor([2, 3, 4]))
    assert torch.equal(table.weight, table2.weight)


def test_apply_rows_hook_coalesces_duplicates() -> None:
    """The data-parallel hook: pairs gathered from two 'ranks' with overlapping ids."""
    a, b = make_table(), make_table()
    opt_a, opt_b = RowSparseAdam([a], lr=0.05), RowSparseAdam([b], lr=0.05)
    ids = torch.tensor([1, 5, 1, 8])
    grads = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 10
    opt_a.apply_rows(a, ids, grads)
    opt_b.apply_rows(
        b, torch.tensor([1, 5, 8]), torch.stack([grads[0] + grads[2], grads[1], grads[3]]), unique=True
    )
    assert torch.equal(a.weight, b.weight)


def test_eval_and_frozen_lookups_record_nothing() -> None:
    table = make_table()
    ids = torch.tensor([1, 2])
    train_out = table(ids)
    table.eval()
    assert torch.equal(table(ids), train_out.detach())  # same values either way
    table.train()
    table.track_rows = False
    table(ids)
    with torch.no_grad():
        table.track_rows = True
        table(ids)
    assert len(table.collect_grads()) == 0  # the one tracked forward above never got a gradient


def test_two_forwards_before_a_step_sum_their_gradients() -> None:
    """Gradient accumulation: two lookups, one step, equals one lookup of both batches."""
    a, b = make_table(), make_table()
    opt_a, opt_b = RowSparseAdam([a], lr=0.05), RowSparseAdam([b], lr=0.05)
    first, second = torch.tensor([1, 2, 3]), torch.tensor([3, 4])
    opt_a.zero_grad()
    (loss_of(a(first)) + loss_of(a(second))).backward()
    opt_a.step()
    opt_b.zero_grad()
    out = b(torch.cat([first, second]))
    (loss_of(out[:3]) + loss_of(out[3:])).backward()
    opt_b.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-7)
