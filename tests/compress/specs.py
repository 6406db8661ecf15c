"""Small specs the compression tests share: one per coupling that pruning must keep intact."""

RESIDUAL = """
model Residual() {
    input x: float32[B, 3, 8, 8]
    h = x -> stem: conv(16, 3, padding=1) -> sbn: bn -> relu
    y = h -> c1: conv(12, 3, padding=1) -> b1: bn -> relu -> c2: conv(16, 3, padding=1) -> b2: bn
    h = relu(y + h)
    output logits = h -> global_avg_pool -> flatten -> fc: linear(5)
}
"""

CONCAT = """
model Concat() {
    input x: float32[B, 3, 8, 8]
    a = x -> ca: conv(8, 3, padding=1) -> relu
    b = x -> cb: conv(12, 1) -> bnb: bn -> relu
    h = concat(a, b, dim=1) -> mix: conv(16, 3, padding=1) -> relu
    output logits = h -> flatten -> fc: linear(5)
}
"""

SPLIT = """
model Split() {
    input x: float32[B, 3, 8, 8]
    h = x -> c1: conv(24, 3, padding=1) -> relu
    a, b = h -> split([8, 16], dim=1)
    a = a -> ca: conv(6, 1) -> relu
    b = b -> cb: conv(6, 1) -> relu
    output logits = (a + b) -> global_avg_pool -> flatten -> fc: linear(5)
}
"""

CHUNK = """
model Chunk() {
    input x: float32[B, 3, 8, 8]
    h = x -> c1: conv(16, 3, padding=1) -> relu
    a, b = h -> split(8, dim=1)
    h = concat(b, a, dim=1) -> c2: conv(8, 1) -> relu
    output logits = h -> global_avg_pool -> flatten -> fc: linear(5)
}
"""

SHUFFLE = """
model Shuffle() {
    input x: float32[B, 3, 8, 8]
    h = x -> c1: conv(16, 3, padding=1) -> b1: bn -> relu -> channel_shuffle(4)
          -> c2: conv(8, 1) -> relu
    output logits = h -> global_avg_pool -> flatten -> fc: linear(5)
}
"""

DEPTHWISE = """
model Depthwise() {
    input x: float32[B, 3, 8, 8]
    h = x -> c1: conv(16, 1) -> b1: bn -> relu
          -> dw: conv(32, 3, padding=1, groups=16) -> b2: bn -> relu
          -> pw: conv(8, 1) -> relu
    output logits = h -> global_avg_pool -> flatten -> fc: linear(5)
}
"""

GROUPED = """
model Grouped() {
    input x: float32[B, 3, 8, 8]
    h = x -> c1: conv(16, 1) -> b1: bn -> relu
          -> gc: conv(24, 3, padding=1, groups=4) -> b2: bn -> relu
          -> pw: conv(8, 1) -> relu
    output logits = h -> global_avg_pool -> flatten -> fc: linear(5)
}
"""

HEADS = """
model Heads() {
    input x: float32[B, 6, 16]
    q = x -> q_proj: linear(32)
    k = x -> k_proj: linear(32)
    v = x -> v_proj: linear(32)
    h = attention(q, k, v, heads=4) -> o_proj: linear(16)
    output logits = h -> mean(1) -> fc: linear(5)
}
"""

FLATTEN = """
model Flat() {
    input x: float32[B, 1, 8, 8]
    h = x -> c1: conv(8, 3, padding=1) -> relu -> max_pool(2) -> flatten
    output logits = h -> f1: linear(32) -> relu -> fc: linear(10)
}
"""

ALL = {"residual add": RESIDUAL, "concat": CONCAT, "split": SPLIT, "chunk": CHUNK,
       "channel shuffle": SHUFFLE, "depthwise conv": DEPTHWISE, "grouped conv": GROUPED,
       "attention heads": HEADS, "linear after flatten": FLATTEN}

ATTENTION_MHA = """
model Tiny() {
    input x: float32[B, 6, 4]
    h = x -> embed: linear(16)
    h = (h -> attn: mha(4)) + h
    h = h -> up: linear(32) -> relu -> down: linear(16)
    output logits = h -> mean(1) -> fc: linear(3)
}
"""

TIED = """
model Lm() {
    input ids: int64[B, 5]
    h = ids -> wte: embedding(50, 16)
    h = h -> mlp: linear(16) -> relu
    output logits = h -> lm_head: linear(50, tie=wte, bias=false)
}
"""

MLP = """
model Mlp() {
    input x: float32[B, 64]
    output logits = x -> l1: linear(256) -> relu -> l2: linear(256) -> relu -> head: linear(10, transposed=true)
}
"""

LSTM = """
model Rnn() {
    input x: float32[B, 7, 32]
    out, state = x -> rnn: lstm(128)
    output logits = out -> mean(1) -> head: linear(5)
}
"""
