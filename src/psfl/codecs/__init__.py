"""Compression codecs and operators: updates/models to REAL bytes and back (core; may import
``psfl.utils`` only).

Codecs (registry :data:`CODECS`, one byte id each on the wire)::

    dense        raw little-endian float32
    sparse       exact zeros: cheapest of bitmask / fixed positions / Elias-gamma / Rice gaps
    stc          sparse ternary {-mu, 0, mu}: Golomb-Rice positions, sign bits (Sattler 2019)
    ternary2bit  FTTQ ternary weights: 2 bits each + float32 scale(s) (Xu 2020)
    qsgd         QSGD s-level quantisation: norm + signs + levels (FedPAQ, Reisizadeh 2020)
    svd          truncated-SVD factors at an energy threshold, dense fallback (FedKD, Wu 2022)

    payload = CODECS.get("stc").encode(t)           # or psfl.codecs.encode("stc", t)
    t_hat   = CODECS.get("stc").decode(payload, t.shape)

Operators (what a contender does before encoding): :func:`topk_ternarize`,
:func:`ttq_quantize`/:func:`ttq_dequantize`, :func:`qsgd_quantize`/:func:`qsgd_dequantize`,
error feedback :func:`ef_step`.

State container: ``encode_state(tensors, codec_for) -> bytes`` and
``decode_state(bytes, keys) -> dict``; an upload is one ``bytes``, Z = 8 * len(bytes).
"""
from psfl.codecs.base import CODECS, Codec, codec_by_id, decode, encode, register_codec
from psfl.codecs.dense import DenseCodec, dense_nbytes
from psfl.codecs.ops import (ef_correct, ef_residual, ef_step, qsgd_dequantize, qsgd_quantize, topk_k,
                             topk_ternarize, ttq_dequantize, ttq_quantize)
from psfl.codecs.qsgd import (QSGD_VARIANTS, QSGDCodec, decode_qsgd, decode_qsgd_buckets, encode_qsgd,
                              encode_qsgd_buckets, qsgd_variant_nbytes)
from psfl.codecs.sparse import SPARSE_VARIANTS, SparseCodec, sparse_nbytes, sparse_variant_nbytes
from psfl.codecs.state import always, decode_state, encode_state, payload_bits
from psfl.codecs.stc import (STCCodec, stc_expected_bits, stc_golomb_bits, stc_golomb_parameter,
                             stc_header_bytes)
from psfl.codecs.svd import SVDCodec, energy_threshold, matrix_shape, svd_nbytes, svd_rank
from psfl.codecs.ternary import Ternary2BitCodec, ternary2bit_nbytes

__all__ = [
    "CODECS", "Codec", "codec_by_id", "decode", "encode", "register_codec",
    "DenseCodec", "dense_nbytes",
    "SparseCodec", "SPARSE_VARIANTS", "sparse_nbytes", "sparse_variant_nbytes",
    "STCCodec", "stc_expected_bits", "stc_golomb_bits", "stc_golomb_parameter", "stc_header_bytes",
    "Ternary2BitCodec", "ternary2bit_nbytes",
    "SVDCodec", "svd_rank", "svd_nbytes", "energy_threshold", "matrix_shape",
    "QSGDCodec", "QSGD_VARIANTS", "encode_qsgd", "decode_qsgd", "qsgd_variant_nbytes",
    "encode_qsgd_buckets", "decode_qsgd_buckets",
    "topk_k", "topk_ternarize", "ttq_quantize", "ttq_dequantize", "qsgd_quantize", "qsgd_dequantize",
    "ef_correct", "ef_residual", "ef_step",
    "encode_state", "decode_state", "always", "payload_bits",
]
