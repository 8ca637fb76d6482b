"""Data layer: datasets as uint8 arrays, preprocessing to model inputs, the non-IID
partition over clients (Sec. V-A, Table I, Fig. 6) and per-client batch iteration (core;
may import ``psfl.utils`` only).

    ds = load_dataset("fashion_mnist")                      # bundled sample if no data_dir
    prepared = prepare(ds, INPUT_PRESETS.get("native"))     # float32 (N, C, H, W)
    part = make_partition(ds.y_train, num_classes=ds.num_classes, alpha=0.9, sizes="table1")
    clients = client_datasets(prepared, part)
    for xb, yb in iterate_batches(clients[0].x, clients[0].y, 32, torch.Generator().manual_seed(0)):
        ...
"""
from psfl.data.datasets import (
    DATASETS,
    SOURCES,
    ArrayDataset,
    DatasetInfo,
    clear_dataset_cache,
    load_dataset,
    validate_arrays,
    validation_view,
)
from psfl.data.partition import (
    PARTITIONERS,
    TABLE1_VOLUMES,
    Partition,
    dirichlet_counts,
    format_partition_table,
    iid_counts,
    label_skew,
    local_test_from_test_split,
    partition_fingerprint,
    make_partition,
    parse_sizes,
    plot_partition,
    table1_sizes,
)
from psfl.data.spec import INPUT_PRESETS, InputSpec, ResolvedInput

# Names from the torch-backed modules load on first use (PEP 562), so that importing the
# registries (DATASETS, PARTITIONERS, ...) does not import torch: `psfl --help` stays fast.
_LAZY = {
    **dict.fromkeys(("ClientData", "client_datasets", "iterate_batches"), "loader"),
    **dict.fromkeys(("PreparedData", "clear_prepare_cache", "denormalize", "prepare", "resolve_for",
                     "to_model_input"), "preprocess"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"psfl.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'psfl.data' has no attribute {name!r}")


__all__ = [
    "DATASETS", "SOURCES", "ArrayDataset", "DatasetInfo", "load_dataset", "validate_arrays", "validation_view",
    "clear_dataset_cache", "PreparedData", "prepare", "denormalize", "resolve_for",
    "to_model_input", "clear_prepare_cache", "PARTITIONERS", "TABLE1_VOLUMES", "Partition",
    "make_partition", "dirichlet_counts", "iid_counts", "table1_sizes", "parse_sizes",
    "label_skew", "local_test_from_test_split", "partition_fingerprint", "format_partition_table", "plot_partition", "ClientData", "client_datasets",
    "iterate_batches", "INPUT_PRESETS", "InputSpec", "ResolvedInput",
]
