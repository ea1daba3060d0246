"""The torch.compile backend the tests use.

Where ATEN_CPU_CAPABILITY lowers ATen's CPU level, torch 2.14.1's Inductor
computes wrong results of its own: on an AVX-512 CPU with
ATEN_CPU_CAPABILITY=avx2, `torch.compile` of `lambda x: lin(x).tanh().sum()`
(a torch.nn.Linear, no lstm_ext) returns about half the eager sum, and with
`default` it fails to compile. There the tests compile with aot_eager: Dynamo,
AOTAutograd and lstm_ext's fake and autograd rules, without Inductor's code.
"""

import os

BACKEND = "aot_eager" if os.environ.get("ATEN_CPU_CAPABILITY") else "inductor"
