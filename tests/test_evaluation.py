"""The evaluation of a run: its grid-CRF measures (Table 1) equal the solver layer's energies."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from admsolve import GridCRF, contrast_weights  # noqa: E402
from admsolve.data import open_dataset  # noqa: E402
from admsolve.training.evaluation import Evaluator, image_tensor  # noqa: E402


@pytest.mark.parametrize("connectivity", [4, 8])
def test_the_grid_crf_measures_are_the_relaxed_energy_and_the_potts_energy_of_argmax(connectivity):
    train, val = (open_dataset("synthetic", split) for split in ("train", "val"))
    torch.manual_seed(0)
    network = torch.nn.Conv2d(3, val.n_labels, 3, padding=1)
    evaluator = Evaluator(train, val, n_labels=val.n_labels, connectivity=connectivity, seed=0,
                          device=torch.device("cpu"))
    result = evaluator(network)
    for split, dataset, indices in (("val", val, evaluator.val_images), ("train", train, evaluator.train_images)):
        relaxed, potts = [], []
        for index in indices:
            image = dataset[index].image
            with torch.no_grad():
                soft = network(image_tensor(image[None], torch.device("cpu"))).softmax(1)[0].permute(1, 2, 0).double().numpy()
            problem = GridCRF(np.zeros(soft.shape), contrast_weights(image, connectivity=connectivity))
            relaxed.append(problem.relaxed_energy(soft)[0] / soft[..., 0].size)
            potts.append(problem.cut_weight(soft.argmax(2)) / soft[..., 0].size)
        assert result[f"grid_crf_loss_{split}"] == pytest.approx(np.mean(relaxed), rel=1e-7)
        assert result[f"grid_crf_energy_{split}"] == pytest.approx(np.mean(potts), rel=1e-7)
