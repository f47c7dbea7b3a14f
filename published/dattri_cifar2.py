"""dattri's CIFAR-2 benchmark (Deng et al., NeurIPS 2024 datasets track; dattri 0.3's README figure): LDS
at α = 0.5 of a ResNet-9 on CIFAR-10's cats and dogs (classes 3 and 5, relabelled 0 and 1), 5,000 training
and 500 test images.  Values read off the figure (two decimals at best).

How the numbers can differ by construction: dattri trains its own ResNet-9 recipe on the 5,000 images;
tdabench's ``cifar10`` trains the airbench-style ResNet-9 of 001 Table 4 (one epoch, a 5,000-image warmup
set that fits the whitening layer — here the other 5,000 CIFAR-2 training images), so the model differs;
it trains 8 epochs (001's longer setting): one epoch of 5,000 images is 5 steps, too few for TracIn's
checkpoints.
A GPU run: ``tdabench plan --suite dattri-cifar2`` sizes it first; until one runs, the table says so.
"""
from tdabench.api.published import Anchor, PublishedTable, register_published

FIGURE = "read off dattri's figure; dattri's own ResNet-9 recipe there, the airbench-style one of 001 here (GPU)"
CIFAR2 = ("task.classes=3,5", "task.n_train=5000", "task.n_query=500", "task.epochs=8")


@register_published
class DattriCifar2(PublishedTable):
    name = "dattri-cifar2"
    source = "dattri 0.3 (NeurIPS 2024), CIFAR-2 ResNet-9, LDS figure"
    board_sets = ("gt.retrain_seeds=2",)
    anchors = (
        Anchor("cifar10", "trak", "TRAK-50", 0.37, (*CIFAR2, "trak.models=50", "trak.proj_dim=512"), note=FIGURE,
               uncertainty=0.01),
        Anchor("cifar10", "tracin", "TracIn", 0.07, CIFAR2, note=FIGURE + "; 10 models' final weights there, "
               "checkpoints of one run here", uncertainty=0.01),
    )
