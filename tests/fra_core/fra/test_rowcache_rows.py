"""The projected rows a call needs: only the rows in use (not whole id blocks), the same bits wherever a row
falls in its fixed-shape chunk, in the cached table and uncached."""

from __future__ import annotations

import torch

from fra_core.fra import rowcache
from fra_core.fra.sides import Dictionary, sae_decoder

from .helpers_fra import make_sae


def _dictionary(d_in: int = 12, d_sae: int = 700):
    saes = [make_sae(d_in, f"blocks.{l}.attn.hook_z", d_sae, seed=l) for l in range(2)]
    maps = [torch.randn(d_in, 3, 4, generator=torch.Generator().manual_seed(9 + s)) for s in range(2)]
    return Dictionary("hook_z", saes, [0, 1], [s.cfg.metadata.hook_name for s in saes]), maps, [0, d_sae, 2 * d_sae]


def test_only_the_rows_in_use_are_projected_exactly_and_position_independently():
    dic, maps, offsets = _dictionary()
    ids = torch.tensor([[[5, 600, 1400], [699, 700, 1400], [3, 3, 1399]]])  # 1400 = the padding id
    rows, row_of = rowcache.project_active(dic, maps, ids, offsets, sae_decoder)
    assert rows.shape == (6 + 1, 3, 4)  # 6 distinct feature ids + the zero padding row, not 3 blocks of 256
    assert not rows[row_of[0, 1, 2]].any()
    for gid in (5, 600, 699, 700, 3, 1399):
        s = int(gid >= offsets[1])
        expected = torch.einsum("d,dhe->he", sae_decoder(dic.saes[s])[gid - offsets[s]], maps[s])
        got = rows[row_of[ids == gid][0]]
        assert torch.allclose(got, expected, atol=1e-6)
    # the same row projected among other rows (another position in its chunk): the same bits
    more = torch.tensor([[[1, 2, 600], [4, 5, 9]]])
    rows2, row_of2 = rowcache.project_active(dic, maps, more, offsets, sae_decoder)
    assert torch.equal(rows2[row_of2[0, 0, 2]], rows[row_of[0, 0, 1]])
    assert torch.equal(rows2[row_of2[0, 1, 1]], rows[row_of[0, 0, 0]])
