#!/usr/bin/env bash
# The commands that produced the shipped semantic checkpoints, in order (each card also records
# its own command and, under "init_from", the lineage of earlier rounds). About 75 min of CPU
# per U-Net / ResUNet on 1 thread each; run the two chains side by side on a 2-core machine.
# Rounds 1-2 train on 144x112 crops (15-45 % of the image area, about the native scale), round 3
# fine-tunes at the full 288x224 so the model sees whole-image context at the test resolution.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SEG_DATA_DIR:?set SEG_DATA_DIR to the data root that holds iccv09Data/}"
work=${WORK:-runs}
mkdir -p "$work"
crops=(--batch-size 16 --train-size 144x112 --crop-fraction 0.15,0.45 --threads 1 --quiet)
full=(--batch-size 8 --train-size 288x224 --crop-fraction 0.5,1.0 --threads 1 --quiet)
# full resolution with objects also shown smaller (zoom-out), small rotations and an IoU surrogate in the loss
full_aug=(--batch-size 8 --train-size 288x224 --crop-fraction 0.4,1.0 --zoom-out 1.4 --rotate 5 --lovasz 0.5 --threads 1 --quiet)

python -m seg train --model prior --out checkpoints/prior --quiet
# CNN: 30 epochs on crops, then 20 at full resolution with zoom-out, rotation and a Lovasz-softmax term
python -m seg train --model cnn --arch width=32 --epochs 30 --lr 2e-3 "${crops[@]}" --out "$work/cnn-r1"
python -m seg train --model cnn --arch width=32 --init-from "$work/cnn-r1" --epochs 20 --lr 5e-4 "${full_aug[@]}" --out checkpoints/cnn

# U-Net: 36 epochs, warm restart 40 epochs, full-resolution fine-tune 12 epochs, then 20 with zoom-out,
# rotation and the Lovasz-softmax term (the best epoch, 13, is kept)
python -m seg train --model unet --arch base_channels=16 --epochs 36 --lr 2e-3 "${crops[@]}" --out "$work/unet-r1"
python -m seg train --model unet --arch base_channels=16 --init-from "$work/unet-r1" --epochs 40 --lr 1e-3 "${crops[@]}" --out "$work/unet-r2"
python -m seg train --model unet --arch base_channels=16 --init-from "$work/unet-r2" --epochs 12 --lr 5e-4 "${full[@]}" --out "$work/unet-r3"
python -m seg train --model unet --arch base_channels=16 --init-from "$work/unet-r3" --epochs 20 --lr 3e-4 "${full_aug[@]}" --out checkpoints/unet

# ResUNet (encoder from scratch): 2 epochs encoder frozen + 34 unfrozen, warm restart 50, full-resolution 12
python -m seg train --model resunet --encoder-init none --frozen-epochs 2 --encoder-lr-ratio 1.0 --epochs 36 --lr 2e-3 "${crops[@]}" --out "$work/resunet-r1"
python -m seg train --model resunet --encoder-init none --init-from "$work/resunet-r1" --frozen-epochs 0 --epochs 50 --lr 1.5e-3 "${crops[@]}" --out "$work/resunet-r2"
python -m seg train --model resunet --encoder-init none --init-from "$work/resunet-r2" --frozen-epochs 0 --epochs 12 --lr 5e-4 "${full[@]}" --out checkpoints/resunet
cp checkpoints/resunet.safetensors "$work/resunet-r3.safetensors" && cp checkpoints/resunet.json "$work/resunet-r3.json"
# ResUNet round 4: a second, lower-rate full-resolution fine-tune (2 threads)
python -m seg train --model resunet --encoder-init none --init-from "$work/resunet-r3" --frozen-epochs 0 --epochs 10 --lr 2.5e-4 --batch-size 8 --train-size 288x224 --crop-fraction 0.5,1.0 --threads 2 --quiet --out checkpoints/resunet
python -m seg quantize --checkpoint checkpoints/resunet  # weights stored as int8 in place (val re-measured)
# ResUNet round 5: 16 epochs with zoom-out, rotation and the Lovasz-softmax term (the best epoch, 10, is kept),
# then stored as int8 again
python -m seg train --model resunet --encoder-init none --init-from checkpoints/resunet --frozen-epochs 0 --epochs 16 --lr 3e-4 "${full_aug[@]}" --out "$work/resunet-r5"
python -m seg quantize --checkpoint "$work/resunet-r5" --out checkpoints/resunet

# The ensemble of the two (probabilities averaged; its card names them and their weights' hashes)
python -m seg ensemble unet resunet --out ensemble --checkpoint-dir checkpoints
