import random

import zstandard as zstd

from nova_pipeline.core.compression.dictionary import (
    DictionaryOptions,
    DictionaryRegistry,
    build_for_tree,
    build_or_keep,
    is_heldout,
)
from nova_pipeline.core.ingest.manifest import scan, unique_contents
from nova_pipeline.core.ingest.walk import ScanOptions


def test_trains_on_real_code_and_beats_no_dictionary(stdlib_tree, tmp_path):
    manifest = scan(ScanOptions(stdlib_tree)).manifest
    registry = DictionaryRegistry(tmp_path)
    info, action, skipped = build_for_tree(
        unique_contents(stdlib_tree, manifest), registry, DictionaryOptions(dict_size=16_384)
    )
    assert action == "trained" and skipped == 0
    data = registry.load(info.blake3)  # named by, and verified against, its blake3
    assert registry.path(info.blake3).exists() and len(data) == info.size <= 16_384
    assert zstd.ZstdCompressionDict(data).dict_id() == info.dict_id
    assert info.heldout_files > 0 and info.ratio_with > info.ratio_without
    # same corpus again: nothing trained, nothing measured
    again, action2, _ = build_for_tree(
        unique_contents(stdlib_tree, manifest), registry, DictionaryOptions(dict_size=16_384)
    )
    assert action2 == "unchanged" and again.blake3 == info.blake3


def _python_like(n, seed):
    rnd = random.Random(seed)
    return [
        (
            "import os\nimport sys\n\n\ndef handler_%d(request, *args, **kwargs):\n"
            '    """Handle the request."""\n    return process(request, %d)\n' % (i, rnd.randint(0, 9999))
        ).encode()
        * 3
        for i in range(n)
    ]


def _drifted(n, seed):
    rnd = random.Random(seed)
    return [",".join(str(rnd.random()) for _ in range(60)).encode() for _ in range(n)]


def test_keeps_the_dictionary_without_drift_and_retrains_on_drift(tmp_path):
    registry = DictionaryRegistry(tmp_path)
    opts = DictionaryOptions(dict_size=4096, drift_threshold=0.05)
    train = _python_like(200, 1)
    held = _python_like(40, 2)
    digests = [f"{i:064x}" for i in range(len(train))]
    hd = [f"{i + 1000:064x}" for i in range(len(held))]
    first, action = build_or_keep(train, digests, held, hd, registry, opts)
    assert action == "trained"
    # a slightly different held-out set of the same kind of files: measured, kept
    held2 = _python_like(41, 3)
    kept, action = build_or_keep(
        train, digests, held2, [f"{i + 2000:064x}" for i in range(41)], registry, opts
    )
    assert action == "kept" and kept.blake3 == first.blake3
    # a corpus of a different kind: the held-out ratio collapses, so it retrains
    drift = _drifted(200, 4)
    new, action = build_or_keep(
        drift, digests, _drifted(40, 5), [f"{i + 3000:064x}" for i in range(40)], registry, opts
    )
    assert action == "trained" and new.blake3 != first.blake3
    assert registry.path(first.blake3).exists()  # the old dictionary stays: the store may refer to it


def test_tiny_corpus_gets_no_dictionary(tmp_path):
    registry = DictionaryRegistry(tmp_path)
    info, action = build_or_keep(
        [b"x = 1\n"] * 3, ["a" * 64, "b" * 64, "c" * 64], [], [], registry, DictionaryOptions()
    )
    assert action == "no_dictionary" and info.blake3 == "" and "too little" in info.reason
    assert registry.current().blake3 == ""


def test_heldout_split_holds_out_about_the_share_asked():
    import blake3

    digests = [blake3.blake3(str(i).encode()).hexdigest() for i in range(5000)]
    held = [d for d in digests if is_heldout(d, 20)]
    assert 0.18 < len(held) / len(digests) < 0.22
