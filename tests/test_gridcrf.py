"""Properties of the problem layer: the reference energy, the relaxation, contrast weights, unaries,
and the copy semantics of the inputs."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import admsolve as adm
from strategies import (OFFSETS, brute_force, direct_energy, direct_parts, grid_problems, inside,
                        labelings, scale)


def close(a, b, rel=1e-12):
    return math.isclose(a, b, rel_tol=rel, abs_tol=rel)


def random_probs(rng, shape, simplex=True):
    s = rng.random(shape)
    if simplex:
        s /= s.sum(axis=-1, keepdims=True)
    return s


# --------------------------------------------------------------------------- reference energy

def test_offsets_are_the_documented_ones():
    assert tuple(map(tuple, adm.OFFSETS)) == OFFSETS


@given(st.data())
def test_energy_equals_direct_double_loop(data):
    problem = data.draw(grid_problems())
    labels = data.draw(labelings(problem))
    expected = direct_energy(problem, labels)
    assert close(problem.energy(labels), expected)
    assert isinstance(problem.energy(labels), float)


@given(st.data())
def test_cut_weight_equals_direct_sum(data):
    problem = data.draw(grid_problems())
    labels = data.draw(labelings(problem))
    energy_data, cut = direct_parts(problem, labels)
    assert close(problem.cut_weight(labels), cut)
    # energy = data + lam * cut_weight
    assert close(problem.energy(labels), energy_data + problem.lam * problem.cut_weight(labels))
    # a constant labeling cuts nothing
    for k in range(problem.n_labels):
        constant = np.full(problem.shape, k)
        assert problem.cut_weight(constant) == 0.0
        assert close(problem.energy(constant), float(np.asarray(problem.unary, float)[..., k].sum()))


@given(st.data())
def test_edges_leaving_the_image_are_ignored(data):
    problem = data.draw(grid_problems(max_side=6))
    height, width = problem.shape
    for d in range(problem.weights.shape[0]):
        for y in range(height):
            for x in range(width):
                if inside(y, x, d, height, width) is None:
                    assert problem.weights[d, y, x] == 0.0


@given(st.data())
def test_brute_force_agrees_with_reference_energy(data):
    """The brute-force helper's optimum is a labeling whose reference energy it reports."""
    problem = data.draw(grid_problems(max_labels=3, max_labelings=3000))
    best, labels = brute_force(problem, return_labels=True)
    assert not problem.violates_seeds(labels)
    assert close(problem.energy(labels), best)
    assert problem.energy(problem.initial_labels()) >= best - 1e-9 * scale(best)


@given(st.data())
def test_violates_seeds_and_apply_seeds(data):
    problem = data.draw(grid_problems(max_side=6))
    labels = data.draw(labelings(problem))
    seeded = np.asarray(problem.seeds) != problem.unlabeled
    assert np.array_equal(problem.seeded, seeded)
    expected = bool(np.any(labels[seeded] != np.asarray(problem.seeds)[seeded]))
    assert problem.violates_seeds(labels) == expected
    fixed = problem.apply_seeds(labels)
    assert not problem.violates_seeds(fixed)
    assert np.array_equal(fixed[~seeded], labels[~seeded])
    init = problem.initial_labels()
    assert not problem.violates_seeds(init)
    assert np.array_equal(init[~seeded], np.argmin(problem.unary, axis=2)[~seeded])


@pytest.mark.parametrize("unlabeled", [2**32, 2**40, -2**31 - 1, -2**32])
@pytest.mark.parametrize("give_seeds", [True, False])
def test_unlabeled_value_outside_int32_is_handled_or_rejected(unlabeled, give_seeds):
    """`unlabeled` may be any integer outside [0, K); pixels whose seed equals it must be free (or
    the value must be refused with a ValueError naming `unlabeled`). Seeds are stored as int32: an
    earlier version accepted 2**32, stored it as 0 and silently seeded every pixel with label 0
    (and raised a bare OverflowError for ``seeds=None``)."""
    unary = np.array([[[0.0, -1.0], [0.0, -1.0]]])
    weights = np.zeros((2, 1, 2))
    seeds = np.full((1, 2), unlabeled, dtype=np.int64) if give_seeds else None
    try:
        problem = adm.GridCRF(unary, weights, seeds=seeds, unlabeled=unlabeled)
    except ValueError as exc:
        assert "unlabeled" in str(exc) and str(unlabeled) in str(exc)
        return
    assert not problem.seeded.any(), f"free pixels became seeds: seeds stored as {problem.seeds.tolist()}"
    assert np.array_equal(problem.initial_labels(), [[1, 1]])


# --------------------------------------------------------------------------- relaxation

@given(st.data())
def test_relaxed_energy_at_one_hot_equals_energy(data):
    problem = data.draw(grid_problems())
    labels = data.draw(labelings(problem))
    one_hot = np.eye(problem.n_labels)[labels]
    value, grad = problem.relaxed_energy(one_hot)
    assert close(value, problem.energy(labels))
    assert grad.shape == problem.unary.shape


@given(st.data())
@settings(max_examples=30)
def test_relaxed_gradient_matches_central_differences(data):
    problem = data.draw(grid_problems(max_pixels=16, max_labels=4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="rng seed"))
    probs = random_probs(rng, problem.unary.shape, simplex=data.draw(st.booleans(), label="simplex"))
    value, grad = problem.relaxed_energy(probs)
    h = 1e-3  # R is quadratic, so central differences are exact up to rounding
    numeric = np.empty_like(grad)
    for index in np.ndindex(*probs.shape):
        plus, minus = probs.copy(), probs.copy()
        plus[index] += h
        minus[index] -= h
        numeric[index] = (problem.relaxed_energy(plus)[0] - problem.relaxed_energy(minus)[0]) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6 * scale(value))
    # and along a random direction
    direction = rng.standard_normal(probs.shape)
    slope = (problem.relaxed_energy(probs + h * direction)[0]
             - problem.relaxed_energy(probs - h * direction)[0]) / (2 * h)
    assert math.isclose(slope, float(np.sum(grad * direction)), rel_tol=1e-6,
                        abs_tol=1e-6 * scale(value))


@given(st.data())
def test_relaxed_energy_is_linear_in_each_pixel(data):
    """R is multilinear: at one pixel, R(t*a + (1-t)*b) = t*R(a) + (1-t)*R(b)."""
    problem = data.draw(grid_problems(max_side=8))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="rng seed"))
    probs = random_probs(rng, problem.unary.shape)
    height, width = problem.shape
    y = data.draw(st.integers(0, height - 1), label="y")
    x = data.draw(st.integers(0, width - 1), label="x")
    t = data.draw(st.floats(0, 1), label="t")
    a, b = random_probs(rng, (problem.n_labels,)), random_probs(rng, (problem.n_labels,))
    values = []
    for s_p in (a, b, t * a + (1 - t) * b):
        trial = probs.copy()
        trial[y, x] = s_p
        values.append(problem.relaxed_energy(trial)[0])
    r_a, r_b, r_mix = values
    assert math.isclose(r_mix, t * r_a + (1 - t) * r_b, rel_tol=1e-9, abs_tol=1e-9 * scale(r_a, r_b))


@given(st.data())
def test_relaxed_energy_on_simplex_is_bounded_by_discrete_energies(data):
    """A multilinear function on a product of simplices reaches its minimum and maximum at vertices,
    and the Potts part of R lies in [0, lam * sum of weights] on the simplex."""
    problem = data.draw(grid_problems(max_labels=3, max_labelings=3000))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="rng seed"))
    probs = random_probs(rng, problem.unary.shape)
    value, _ = problem.relaxed_energy(probs)
    lowest = brute_force(problem, respect_seeds=False)
    tol = 1e-9 * scale(value, lowest)
    assert value >= lowest - tol
    linear = float(np.sum(np.asarray(problem.unary, float) * probs))
    assert linear - tol <= value <= linear + problem.lam * float(problem.weights.sum()) + tol


def test_relaxed_energy_hand_example():
    # 1 x 2 image, K = 2, one horizontal edge of weight 2, lam = 3.
    unary = np.array([[[1.0, 0.0], [0.0, 4.0]]])
    weights = np.array([[[2.0, 7.0]], [[5.0, 5.0]]])  # only weights[0, 0, 0] is inside the image
    problem = adm.GridCRF(unary, weights, lam=3.0)
    probs = np.array([[[0.5, 0.5], [0.25, 0.75]]])
    value, grad = problem.relaxed_energy(probs)
    # unary part 0.5 + 3 = 3.5; pair part 3 * 2 * (0.5 + 0.5 - (0.125 + 0.375)) = 3
    assert value == pytest.approx(6.5)
    np.testing.assert_allclose(grad, [[[1 + 6 * 0.25, 0 + 6 * -0.25], [0 + 6 * 0.0, 4 + 6 * 0.0]]])
    assert problem.energy([[0, 1]]) == pytest.approx(1 + 4 + 6)
    assert problem.energy([[1, 1]]) == pytest.approx(4)


# --------------------------------------------------------------------------- contrast weights

def direct_contrast_weights(image, connectivity, sigma2):
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    height, width, channels = image.shape
    n_dir = 2 if connectivity == 4 else 4
    sq = {}
    for y in range(height):
        for x in range(width):
            for d in range(n_dir):
                q = inside(y, x, d, height, width)
                if q is not None:
                    sq[d, y, x] = sum((float(image[y, x, c]) - float(image[q][c])) ** 2
                                      for c in range(channels))
    if sigma2 is None:
        sigma2 = sum(sq.values()) / len(sq) if sq else 0.0
    out = np.zeros((n_dir, height, width))
    for (d, y, x), value in sq.items():
        factor = math.exp(-value / (2 * sigma2)) if sigma2 > 0 else 1.0
        out[d, y, x] = factor / (math.sqrt(2) if OFFSETS[d][0] and OFFSETS[d][1] else 1.0)
    return out


@st.composite
def images(draw, max_side=5):
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    channels = draw(st.sampled_from([None, 1, 3]))
    shape = (height, width) if channels is None else (height, width, channels)
    if draw(st.booleans()):
        return draw(hnp.arrays(np.uint8, shape, elements=st.sampled_from([0, 1, 7, 100, 128, 200, 254, 255]),
                               fill=st.nothing()))
    return draw(hnp.arrays(np.float64, shape, elements=st.floats(-2, 2, allow_subnormal=False),
                           fill=st.nothing()))


@given(images(), st.sampled_from([4, 8]), st.one_of(st.none(), st.floats(1e-3, 1e4)))
def test_contrast_weights_match_direct_loop(image, connectivity, sigma2):
    before = image.copy()
    weights = adm.contrast_weights(image, connectivity=connectivity, sigma2=sigma2)
    expected = direct_contrast_weights(image, connectivity, sigma2)
    assert weights.dtype == np.float64
    assert weights.shape == expected.shape
    np.testing.assert_allclose(weights, expected, rtol=1e-12, atol=1e-300)
    assert np.array_equal(image, before)
    assert np.all((weights >= 0) & (weights <= 1))


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("image", [np.full((3, 4), 17, np.uint8), np.full((2, 5, 3), 0.25)])
def test_contrast_weights_of_constant_image(image, connectivity):
    """Default sigma2 of a constant image is 0: every inside edge gets the exp factor 1, so weight 1
    (divided by sqrt(2) on diagonals, as for any image); edges leaving the image get 0."""
    weights = adm.contrast_weights(image, connectivity=connectivity)
    height, width = image.shape[:2]
    for d in range(weights.shape[0]):
        for y in range(height):
            for x in range(width):
                if inside(y, x, d, height, width) is None:
                    assert weights[d, y, x] == 0.0
                else:
                    assert weights[d, y, x] == pytest.approx(1.0 if d < 2 else 1 / math.sqrt(2))


def test_contrast_weights_uint8_does_not_wrap():
    image = np.array([[0, 255]], dtype=np.uint8)
    weights = adm.contrast_weights(image, connectivity=4, sigma2=255.0**2)
    assert weights[0, 0, 0] == pytest.approx(math.exp(-0.5))


# --------------------------------------------------------------------------- unaries

grid_probs = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
    elements=st.integers(0, 64).map(lambda n: n / 64.0),
    fill=st.nothing(),
)


@given(grid_probs, st.floats(0, 10), st.sampled_from([1e-12, 1e-8, 1e-3, 0.1, 0.5]))
def test_adm_unary_formula(probs, gamma, eps):
    before = probs.copy()
    unary = adm.adm_unary(probs, gamma=gamma, eps=eps)
    np.testing.assert_allclose(unary, -gamma * np.log(np.clip(probs, eps, None)), rtol=1e-14, atol=0)
    assert unary.dtype == np.float64 and unary.shape == probs.shape
    assert np.array_equal(probs, before)
    assert np.all(unary <= -gamma * math.log(eps) * (1 + 1e-14))


@given(grid_probs, st.floats(1e-3, 10))
def test_adm_unary_argmin_is_argmax_of_probs(probs, gamma):
    assume(np.all(probs.max(axis=2) > 1e-8))
    unary = adm.adm_unary(probs, gamma=gamma)
    assert np.array_equal(np.argmin(unary, axis=2), np.argmax(probs, axis=2))


@st.composite
def two_colour_scenes(draw):
    height = draw(st.integers(1, 6))
    width = draw(st.integers(2, 6))
    channels = draw(st.sampled_from([None, 3]))
    n_ch = 1 if channels is None else 3
    colour_a = np.array(draw(st.lists(st.integers(0, 255), min_size=n_ch, max_size=n_ch)))
    channel = draw(st.integers(0, n_ch - 1))
    colour_b = colour_a.copy()
    # at least 80 grey levels (5 histogram bins of 16) apart in one channel
    far = [v for v in range(256) if abs(v - colour_a[channel]) >= 80]
    colour_b[channel] = draw(st.sampled_from(far))
    which = draw(hnp.arrays(bool, (height, width), fill=st.nothing()))
    flat = which.ravel()
    ia = draw(st.integers(0, flat.size - 1))
    ib = draw(st.integers(0, flat.size - 2))
    ib = ib + (ib >= ia)
    flat[ia], flat[ib] = False, True  # both colours present
    image = np.where(which[..., None], colour_b, colour_a)
    if channels is None:
        image = image[..., 0]
    labels = draw(st.permutations([0, 1]))
    pixel_label = np.where(which, labels[1], labels[0])
    scribbled = draw(hnp.arrays(bool, (height, width), fill=st.nothing()))
    scribbled.ravel()[[ia, ib]] = True  # a scribble on each colour
    scribbles = np.where(scribbled, pixel_label, 255)
    as_float = draw(st.booleans())
    image = image / 255.0 if as_float else image.astype(np.uint8)
    return image, scribbles, pixel_label


@given(two_colour_scenes())
def test_scribble_unary_prefers_the_scribbled_colour(scene):
    image, scribbles, pixel_label = scene
    image_before, scribbles_before = image.copy(), scribbles.copy()
    unary = adm.scribble_unary(image, scribbles)
    assert unary.shape == image.shape[:2] + (2,)
    assert np.all(np.isfinite(unary)) and np.all(unary > 0)
    assert np.array_equal(np.argmin(unary, axis=2), pixel_label)
    assert np.array_equal(image, image_before) and np.array_equal(scribbles, scribbles_before)
    # an explicit, larger K adds labels with no scribbles: flat (uninformed) colour models
    wider = adm.scribble_unary(image, scribbles, n_labels=3)
    assert wider.shape[2] == 3
    np.testing.assert_allclose(wider[..., 2], wider[0, 0, 2])


# --------------------------------------------------------------------------- copies

@given(st.data())
@settings(max_examples=30)
def test_caller_arrays_are_copied_and_never_modified(data):
    height = data.draw(st.integers(1, 5), label="H")
    width = data.draw(st.integers(1, 5), label="W")
    n_labels = data.draw(st.integers(2, 4), label="K")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="rng seed"))
    unary = rng.integers(-20, 20, (height, width, n_labels)) / 4.0
    weights = rng.integers(1, 8, (4, height, width)) / 4.0  # edges leaving the image too
    seeds = np.where(rng.random((height, width)) < 0.3, rng.integers(0, n_labels, (height, width)), 255)
    copies = [a.copy() for a in (unary, weights, seeds)]
    problem = adm.GridCRF(unary, weights, lam=1.5, seeds=seeds)
    for original, copy in zip((unary, weights, seeds), copies):
        assert np.array_equal(original, copy)
    labels = rng.integers(0, n_labels, (height, width))
    labels_copy = labels.copy()
    energy = problem.energy(labels)
    probs = random_probs(rng, unary.shape)
    probs_copy = probs.copy()
    relaxed = problem.relaxed_energy(probs)[0]
    assert np.array_equal(labels, labels_copy) and np.array_equal(probs, probs_copy)
    violates = problem.violates_seeds(labels)

    for array in (problem.unary, problem.weights, problem.seeds):
        assert not array.flags.writeable
        assert not any(np.shares_memory(array, a) for a in (unary, weights, seeds))
    unary += 100.0
    weights *= 0.0
    seeds[...] = 0
    assert problem.energy(labels) == energy
    assert problem.relaxed_energy(probs)[0] == relaxed
    assert problem.violates_seeds(labels) == violates
    # the gradient is a new array each call
    _, grad = problem.relaxed_energy(probs)
    grad += 1.0
    assert problem.relaxed_energy(probs)[0] == relaxed


def test_pickled_problem_is_equal_and_read_only():
    import pickle

    rng = np.random.default_rng(0)
    problem = adm.GridCRF(rng.random((3, 4, 2)), rng.random((4, 3, 4)), lam=1.5,
                          seeds=np.where(rng.random((3, 4)) < 0.3, 1, 255))
    copy = pickle.loads(pickle.dumps(problem))
    labels = rng.integers(0, 2, (3, 4))
    assert copy.energy(labels) == problem.energy(labels)
    assert np.array_equal(copy.seeds, problem.seeds)
    for array in (copy.unary, copy.weights, copy.seeds):
        assert not array.flags.writeable
