"""Instance segmentation of Penn-Fudan pedestrians, two ways.

Detection-free: a Deep Watershed Transform (``dwt``) on the core's U-Net body.
Detection-based: torchvision's Mask R-CNN (``maskrcnn``) on a small ResNet-FPN.
Both train through ``seg.engine``, save through ``seg.checkpoints`` and are evaluated
COCO-style (``seg.instances.coco_eval``). ``InstancePredictor`` is the entry point for
the CLI and the dashboard.
"""

#: architectures of instance checkpoints (light: the UI and CLI check cards against these)
DWT_ARCHITECTURES = ("dwt", "dwt_ensemble")
INSTANCE_ARCHITECTURES = (*DWT_ARCHITECTURES, "maskrcnn")
