"""Simulated RTN weight quantization: hand-computed values, exact restore, which layers."""
import pytest
import torch

from pulse.errors import PulseError
from pulse.eval.quant import qmax, quantized, quantized_linears, rtn


def test_rtn_4bit_hand_computed():
    # row 0: absmax 1.4 -> scale 0.2; W/s = 5, -2.3, 7, 0.45 -> round 5, -2, 7, 0 -> 1.0, -0.4, 1.4, 0
    # row 1: absmax 3.5 -> scale 0.5; W/s = 1.2, -7, 6.1, -0.4 -> 1, -7, 6, -0 -> 0.5, -3.5, 3.0, 0
    w = torch.tensor([[1.0, -0.46, 1.4, 0.09], [0.6, -3.5, 3.05, -0.2]])
    out = rtn(w, 4)
    want = torch.tensor([[1.0, -0.4, 1.4, 0.0], [0.5, -3.5, 3.0, 0.0]])
    assert torch.allclose(out, want, atol=1e-6)
    # the quantized values take at most 2*7+1 = 15 levels per row, each an integer multiple of the row's scale
    assert torch.allclose(out[0] / 0.2, torch.round(out[0] / 0.2), atol=1e-5)


def test_rtn_8bit_and_zero_row():
    w = torch.tensor([[127.0, -63.4, 0.5, 1.5], [0.0, 0.0, 0.0, 0.0]])
    out = rtn(w, 8)  # scale 1: round(-63.4) = -63, round(0.5) = 0 (half to even), round(1.5) = 2
    assert out.tolist() == [[127.0, -63.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
    assert qmax(8) == 127 and qmax(4) == 7
    with pytest.raises(PulseError, match="bits"):
        qmax(1)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(6, 5)
        self.b = torch.nn.Linear(5, 4, bias=False)
        self.lm_head = torch.nn.Linear(4, 3)

    def get_output_embeddings(self):
        return self.lm_head


def test_quantized_restores_bitwise_and_skips_lm_head():
    torch.manual_seed(0)
    m = Tiny().to(torch.bfloat16)
    m.a.float()  # a held in fp32 (as master_fp32 layers after unlearning), the rest bf16
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert [n for n, _ in quantized_linears(m)] == ["a", "b"]
    with quantized(m, 4) as n:
        assert n == 2
        assert torch.equal(m.a.weight, rtn(before["a.weight"], 4))
        assert torch.equal(m.b.weight, rtn(before["b.weight"], 4).to(torch.bfloat16))
        assert torch.equal(m.a.bias, before["a.bias"])  # biases untouched
        assert torch.equal(m.lm_head.weight, before["lm_head.weight"])
        assert not torch.equal(m.a.weight, before["a.weight"])
    for k, v in m.state_dict().items():
        assert v.dtype == before[k].dtype
        assert torch.equal(v.view(torch.int16) if v.dtype == torch.bfloat16 else v.view(torch.int32),
                           before[k].view(torch.int16) if v.dtype == torch.bfloat16 else before[k].view(torch.int32))


def test_quantized_restores_after_error():
    torch.manual_seed(1)
    m = Tiny()
    before = m.a.weight.clone()
    with pytest.raises(RuntimeError):
        with quantized(m, 8):
            raise RuntimeError("boom")
    assert torch.equal(m.a.weight, before)
