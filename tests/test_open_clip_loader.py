"""open_clip's own training loader on our shards: `--train-data '<shards>/{00000000..00000003}.tar'
--dataset-type webdataset` with everything else left at open_clip's defaults, as the README promises."""

from __future__ import annotations

import json
import math
import tarfile

import open_clip
import open_clip_train.data as oc_data
import open_clip_train.distributed as oc_distributed
import open_clip_train.params as oc_params
import torch

from curate.models import register_tiny_clip


def _kept_captions(shards) -> list[str]:
    """Every `txt` member of the output tars, read with the standard library alone."""
    captions = []
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".txt"):
                    captions.append(tar.extractfile(member).read().decode("utf-8"))
    return captions


def _batch_size_dividing(n: int, most: int = 64) -> int:
    """The largest batch size up to `most` that splits `n` samples into full batches."""
    return max(b for b in range(1, min(n, most) + 1) if n % b == 0)


def test_open_clip_training_loader_reads_and_counts_our_shards(basic_run):
    shards = basic_run.run_dir.shards
    sizes = json.loads((shards / "sizes.json").read_text())
    tars = sorted(sizes)
    assert tars == [f"{i:08d}.tar" for i in range(4)]
    n = sum(sizes.values())
    assert n == basic_run.stats["written"] > 0
    captions = _kept_captions(shards)
    assert len(captions) == n

    # open_clip drops the last partial batch in training and tops the epoch up to whole batches
    # per worker (ceil); with one process, no workers and a batch size dividing n, the epoch is
    # exactly one pass over the kept samples.
    batch_size = _batch_size_dividing(n)
    train_data = f"{shards}/{{{tars[0][:-4]}..{tars[-1][:-4]}}}.tar"
    model_name = register_tiny_clip()
    argv = ["--train-data", train_data, "--dataset-type", "webdataset", "--model", model_name]
    argv += ["--batch-size", str(batch_size), "--workers", "0", "--device", "cpu", "--precision", "fp32"]
    args = oc_params.parse_args(argv)
    oc_distributed.init_distributed_device(args)  # single process: world_size 1, rank 0
    assert args.world_size == 1 and not args.distributed

    # What open_clip_train.main builds before get_data: the model's train transform and tokenizer.
    torch.manual_seed(0)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        args.model, args.pretrained, precision=args.precision, device=args.device, aug_cfg=args.aug_cfg
    )
    image_size = model.visual.image_size
    image_size = image_size if isinstance(image_size, tuple) else (image_size, image_size)
    del model
    tokenizer = open_clip.get_tokenizer(args.model)

    # sizes.json is what open_clip counts with
    assert oc_data.get_dataset_size(args.train_data) == (n, 4)
    assert oc_data.get_dataset_fn(args.train_data, args.dataset_type) is oc_data.get_wds_dataset
    data = oc_data.get_data(args, (preprocess_train, preprocess_val), epoch=0, tokenizer=tokenizer)
    assert set(data) == {"train"}
    dataloader = data["train"].dataloader
    assert dataloader.num_samples == n
    assert dataloader.num_batches == math.ceil(n / batch_size) == n // batch_size

    data["train"].set_epoch(0)
    seen_tokens = []
    batches = 0
    for images, texts in dataloader:
        batches += 1
        assert isinstance(images, torch.Tensor) and images.dtype == torch.float32
        assert images.shape == (batch_size, 3, *image_size)
        assert torch.isfinite(images).all()
        assert isinstance(texts, torch.Tensor) and texts.dtype == torch.long
        assert texts.shape == (batch_size, tokenizer.context_length)
        seen_tokens.extend(tuple(row) for row in texts.tolist())
    assert batches == dataloader.num_batches
    assert len(seen_tokens) == dataloader.num_samples == n
    # The epoch is exactly the kept samples, each once: a sample the loader dropped (bad image,
    # missing caption) would have been replaced by a repeat from the next pass.
    expected = sorted(tuple(row) for row in tokenizer(captions).tolist())
    assert sorted(seen_tokens) == expected
