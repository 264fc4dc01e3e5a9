"""`KVCache`: preallocated per-layer keys/values for a batch of rows that write in lockstep.

Layout per layer: keys and values [rows, kv_heads, capacity, head_dim]. Every forward writes
the same columns [length, length + T) for all live rows (a left-aligned batch), so a decode
step attends over a view [:rows, :, :length + 1] with no copy (Hugging Face's DynamicCache
concatenates, i.e. copies the whole cache, every step). Rows are ragged through a key-validity
mask (left padding, or a gap) and explicit per-row positions, never through token values (a
pad id may equal EOS). It speaks the one method of the Hugging Face cache protocol that
attention layers call, `update(key, value, layer_idx)`, so any HF decoder can write into it.

Rows leave by swap-remove (the last live rows fill the holes: a few rows copied, not the
whole cache) and the storage shrinks once half of it is dead; columns grow by doubling when
a forward needs more. So memory follows the live batch and its longest sample. A row that
ends and still has to be verified is parked instead: swapped to just past the live rows,
where decode steps no longer touch it and its keys/values stay in place (no copy) until
`parked()` gives a view of the parked rows for their verification forward and
`drop_parked()` frees them. Rows parked at different steps share the columns, the ones
written after a row ended being invalid for it (a gap the mask hides). `live()` and
`rewind()` let the live rows take a look-ahead forward (the verification of a partial
solution) whose columns are then given back. `fork()` starts a new cache from prefixes of
rows (the first k tokens of each, gathered left-padded into fresh storage): the sampler's
continuations from a rollout's step boundaries. Not here: what to run (runner.py) or when
(sampler.py).
"""
from __future__ import annotations

import torch


class KVCache:
    is_compileable = False  # read by some HF code paths; we never compile this cache

    def __init__(self, num_rows: int, capacity: int, device: torch.device, dtype: torch.dtype) -> None:
        if num_rows < 1 or capacity < 1:
            raise ValueError(f"KVCache needs num_rows >= 1 and capacity >= 1, got {num_rows}, {capacity}")
        self.num_rows = num_rows          # live rows: [0, num_rows) of the storage
        self.num_parked = 0               # parked rows: [num_rows, num_rows + num_parked)
        self.capacity = capacity          # columns allocated
        self.length = 0                   # columns written
        self.dtype = dtype
        self.min_value = torch.finfo(dtype).min
        self.keys: list[torch.Tensor] = []    # per layer (R, kv_heads, capacity, head_dim), allocated on first write
        self.values: list[torch.Tensor] = []
        self.is_valid = torch.zeros(num_rows, capacity, dtype=torch.bool, device=device)  # (R, capacity) key mask
        self.next_position = torch.zeros(num_rows, dtype=torch.long, device=device)  # (R,) valid tokens so far
        self._write_start = 0

    # ------------------------------------------------------------------ the HF cache protocol
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        rows, _, num_new, _ = key_states.shape  # (B, kv_heads, T, head_dim)
        if layer_idx == len(self.keys):
            shape = (self.is_valid.shape[0], key_states.shape[1], self.capacity, key_states.shape[3])
            self.keys.append(key_states.new_zeros(shape))
            self.values.append(value_states.new_zeros(shape[:3] + (value_states.shape[3],)))
        start, end = self._write_start, self._write_start + num_new
        self.keys[layer_idx][:rows, :, start:end] = key_states
        self.values[layer_idx][:rows, :, start:end] = value_states
        return self.keys[layer_idx][:rows, :, :end], self.values[layer_idx][:rows, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    # ------------------------------------------------------------------ bookkeeping of one forward
    def append_slots(self, is_valid_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reserves T columns for a forward over `is_valid_new` (B, T) and returns its
        position_ids (B, T) and additive attention mask (B, 1, T, length + T)."""
        rows, num_new = is_valid_new.shape
        start, end = self.length, self.length + num_new
        if rows != self.num_rows:
            raise RuntimeError(f"KVCache: a forward of {rows} rows on a cache of {self.num_rows} live rows")
        if end > self.capacity:
            self._grow(max(end, 2 * self.capacity))
        positions = self.next_position[:rows, None] + is_valid_new.cumsum(1) - 1  # (B, T)
        positions.clamp_(min=0)  # pad slots: any position, they are masked out
        self.next_position[:rows] += is_valid_new.sum(1)
        self.is_valid[:rows, start:end] = is_valid_new
        self._write_start, self.length = start, end
        if num_new == 1:  # decode: no causal part
            mask = torch.zeros(rows, 1, 1, end, dtype=self.dtype, device=positions.device)
            mask.masked_fill_(~self.is_valid[:rows, None, None, :end], self.min_value)
            return positions, mask
        cols = torch.arange(end, device=positions.device)
        query_cols = cols[start:, None]  # (T, 1)
        allowed = (cols[None, :] <= query_cols) & self.is_valid[:rows, None, None, :end]  # (B, 1, T, end)
        allowed |= cols[None, :] == query_cols  # a pad slot sees itself: no fully masked row
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=positions.device)
        return positions, mask.masked_fill_(~allowed, self.min_value)

    # ------------------------------------------------------------------ moving rows
    def copy_rows(self, index: torch.Tensor, capacity: int | None = None) -> KVCache:
        """A new cache holding rows `index` (repeats allowed: prefix sharing) with the written
        columns copied into `capacity` columns (default: the same)."""
        capacity = capacity or self.capacity
        if capacity < self.length:
            raise ValueError(f"KVCache.copy_rows: capacity {capacity} < {self.length} written columns")
        out = KVCache(len(index), capacity, self.is_valid.device, self.dtype)
        out.length = self.length
        out.is_valid[:, :self.length] = self.is_valid[index, :self.length]
        out.next_position.copy_(self.next_position[index])
        for store, new_store in ((self.keys, out.keys), (self.values, out.values)):
            for layer in store:
                fresh = layer.new_zeros((len(index), layer.shape[1], capacity, layer.shape[3]))
                fresh[:, :, :self.length] = layer[index, :, :self.length]
                new_store.append(fresh)
        return out

    def fork(self, rows: torch.Tensor, num_tokens: torch.Tensor, capacity: int) -> KVCache:
        """A new cache whose row i holds the first num_tokens[i] tokens of row rows[i] (the
        first valid columns, i.e. a prefix of that row's sequence; repeats allowed), left-padded
        to the longest prefix, in `capacity` columns. Its positions go on from num_tokens[i], so
        a forward on it continues each prefix as if it had been prefilled alone."""
        width = int(num_tokens.max())
        if capacity < max(width, 1):
            raise ValueError(f"KVCache.fork: capacity {capacity} < the longest prefix, {width} tokens")
        if bool((num_tokens > self.next_position[rows]).any()):
            raise ValueError(f"KVCache.fork: prefixes of {num_tokens.tolist()} tokens, but the rows hold "
                             f"{self.next_position[rows].tolist()}")
        valid = self.is_valid[rows, :self.length]  # (F, L)
        valid_cols = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # (F, L): valid columns first
        slot = torch.arange(width, device=valid.device)[None, :] - (width - num_tokens)[:, None]  # (F, W); < 0: pad
        src = valid_cols.gather(1, slot.clamp(min=0))  # (F, W) source column of each new column
        out = KVCache(len(rows), capacity, valid.device, self.dtype)
        out.length = width
        out.is_valid[:, :width] = slot >= 0
        out.next_position.copy_(num_tokens)
        for store, new_store in ((self.keys, out.keys), (self.values, out.values)):
            for layer in store:  # (R, kv_heads, capacity, head_dim)
                fresh = layer.new_zeros((len(rows), layer.shape[1], capacity, layer.shape[3]))
                fresh[:, :, :width] = layer[rows[:, None], :, src].transpose(1, 2)  # (F, W, kv, hd) -> (F, kv, W, hd)
                new_store.append(fresh)
        return out

    def park_rows(self, rows: list[int]) -> list[int]:
        """Moves live `rows` to the parked block, which starts right after the live rows, by
        swapping them with the last live rows. Returns the old row number of each storage row
        [0, old num_rows) in its new order: the live rows, then the newly parked ones (which
        come before the rows parked earlier)."""
        new_count, order = self._fill_holes(rows, swap=True)
        self.num_rows, self.num_parked = new_count, self.num_parked + len(set(rows))
        return order

    def _fill_holes(self, rows: list[int], swap: bool) -> tuple[int, list[int]]:
        """The last live rows not in `rows` move into the holes `rows` leave among the first
        (num_rows - len(rows)) rows; with `swap` the rows in the holes take their places
        (parking), else they are overwritten (removal). Returns the new live count and the old
        row number of each of the first num_rows storage rows in its new order."""
        order = list(range(self.num_rows))
        leaving = set(rows)
        new_count = self.num_rows - len(leaving)
        holes = [r for r in sorted(leaving) if r < new_count]
        movers = [r for r in range(new_count, self.num_rows) if r not in leaving]
        if holes:
            dst = torch.tensor(holes, device=self.is_valid.device)
            src = torch.tensor(movers, device=self.is_valid.device)
            if swap:
                dst, src = torch.cat([dst, src]), torch.cat([src, dst])
            for tensor in (self.is_valid, self.next_position, *self.keys, *self.values):
                tensor.index_copy_(0, dst, tensor.index_select(0, src))
            for h, m in zip(holes, movers):
                order[h] = m
                if swap:
                    order[m] = h
        return new_count, order

    def parked(self, extra_columns: int) -> KVCache:
        """A cache over the parked rows that shares this one's storage (writes land in place),
        with room for `extra_columns` more columns; its forwards leave the live rows alone."""
        return self._rows_view(self.num_rows, self.num_rows + self.num_parked, extra_columns)

    def live(self, extra_columns: int) -> KVCache:
        """The same view over the live rows, for a look-ahead forward (a verification in the
        middle of decoding) that `rewind` then takes back."""
        return self._rows_view(0, self.num_rows, extra_columns)

    def rewind(self, view: KVCache, next_position: torch.Tensor) -> None:
        """Forgets what a forward through `live()`'s view appended: its columns turn invalid
        again (later decode steps overwrite them) and positions go back to `next_position`."""
        self.is_valid[:view.num_rows, self.length:view.length] = False
        self.next_position[:view.num_rows] = next_position

    def _rows_view(self, lo: int, hi: int, extra_columns: int) -> KVCache:
        if self.length + extra_columns > self.capacity:
            self._grow(max(self.length + extra_columns, 2 * self.capacity))
        view = KVCache.__new__(KVCache)
        view.num_rows, view.num_parked = hi - lo, 0
        view.capacity, view.length, view._write_start = self.length + extra_columns, self.length, self.length
        view.dtype, view.min_value = self.dtype, self.min_value
        view.keys, view.values = [k[lo:hi] for k in self.keys], [v[lo:hi] for v in self.values]
        view.is_valid, view.next_position = self.is_valid[lo:hi], self.next_position[lo:hi]
        return view

    def drop_parked(self) -> None:
        """Frees the parked rows (their verification is done)."""
        self.num_parked = 0
        if 0 < self.num_rows <= self.is_valid.shape[0] // 2:
            self._shrink_storage()

    def remove_rows(self, rows: list[int]) -> list[int]:
        """Drops `rows` (live row numbers); the last live rows move into the holes. Returns the
        old row number of each remaining row, in its new order."""
        if self.num_parked:
            raise RuntimeError("KVCache.remove_rows with parked rows: verify and drop them first")
        new_count, order = self._fill_holes(rows, swap=False)
        self.num_rows = new_count
        if 0 < new_count <= self.is_valid.shape[0] // 2:  # free the dead half
            self._shrink_storage()
        return order[:new_count]

    def _grow(self, capacity: int) -> None:
        """More columns (amortized doubling): storage follows the longest live sample, not
        the longest possible one."""
        if self.capacity == capacity:
            return
        if self.is_valid.shape[1] != self.capacity:
            raise RuntimeError("KVCache: a parked() view cannot grow; reserve its columns in parked()")
        self.capacity = capacity
        valid = self.is_valid.new_zeros((self.is_valid.shape[0], capacity))
        valid[:, :self.length] = self.is_valid[:, :self.length]
        self.is_valid = valid
        for store in (self.keys, self.values):
            for i, layer in enumerate(store):
                fresh = layer.new_zeros((layer.shape[0], layer.shape[1], capacity, layer.shape[3]))
                fresh[:, :, :self.length] = layer[:, :, :self.length]
                store[i] = fresh

    def _shrink_storage(self) -> None:
        n = self.num_rows + self.num_parked  # parked rows keep their storage until dropped
        self.is_valid = self.is_valid[:n].clone()
        self.next_position = self.next_position[:n].clone()
        self.keys = [k[:n].clone() for k in self.keys]
        self.values = [v[:n].clone() for v in self.values]
