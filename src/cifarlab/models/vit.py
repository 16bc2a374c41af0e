"""A tiny Vision Transformer for 32x32 inputs (Dosovitskiy et al. 2020; sizes after DeiT-Tiny, Touvron et al. 2021).

The image is cut into 4x4 patches (64 tokens at 32x32, 49 at 28x28), each
linearly embedded to 192 dimensions (a stride-4 conv is that linear map); a
learnable class token is prepended and a learnable position embedding added.
Then 9 pre-norm encoder blocks:

    x = x + Attention(LayerNorm(x))     3 heads of 64 dimensions
    x = x + MLP(LayerNorm(x))           192 -> 768 (ratio 4) -> GELU -> 192

and a final LayerNorm; the class token's output goes to Linear(192, classes).

The choice: DeiT-Tiny's width, heads and MLP ratio with 9 of its 12 blocks and
patch size 4 instead of 16 (16x16 patches would leave a 32x32 image four
tokens): about 4.0M parameters. With dropout on, rate 0.1 after the embedding,
after the attention projection and in the MLP; 0 when off. There is no
BatchNorm, so the batchnorm switch does not apply (LayerNorm stays). Weights
start as in DeiT (truncated normal, std 0.02; zero biases), which is what the
registry's "default" init keeps.
"""

import torch
from torch import nn
from torch.nn import functional as F

from cifarlab.models.registry import register_model

PATCH, DIM, DEPTH, HEADS, MLP_RATIO, DROPOUT = 4, 192, 9, 3, 4, 0.1


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        b, n, d = x.shape
        # (B, N, 3D) -> 3 x (B, heads, N, D / heads)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.dropout(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_ratio * dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch: int = PATCH,
                 dim: int = DIM, depth: int = DEPTH, heads: int = HEADS, mlp_ratio: int = MLP_RATIO,
                 dropout: bool = True):
        super().__init__()
        rate = DROPOUT if dropout else 0.0
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.embed_dropout = nn.Dropout(rate)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_ratio, rate) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)          # (B, tokens, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.blocks(self.embed_dropout(x))
        return self.head(self.norm(x)[:, 0])


# min_size 4: one patch.
@register_model("vit-tiny", title="ViT-Tiny", min_size=4, switches=("dropout", "init"),
                summary="Vision Transformer: 4x4 patches, dim 192, 9 blocks, 3 heads, MLP 768, class token")
def vit_tiny(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
             dropout: bool = True) -> VisionTransformer:
    return VisionTransformer(num_classes, in_channels, image_size, dropout=dropout)
