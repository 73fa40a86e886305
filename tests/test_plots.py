"""The figures read back: legends, labels and flags are what a reader needs (checked on the matplotlib objects)."""
import json

import numpy as np
import pytest
import torch

from metaprior.plots import figures


@pytest.fixture
def captured(monkeypatch):
    """Keep each figure instead of closing it (save_figure still writes the PNG)."""
    figs = []
    real = figures.save_figure

    def keep(fig, path, dpi=100):
        figs.append(fig)
        fig.savefig(path, dpi=dpi)
        return path

    monkeypatch.setattr(figures, "save_figure", keep)
    yield figs
    for f in figs:
        figures.plt.close(f)
    assert real is not None


def test_categorical_factor_gets_a_discrete_legend_and_many_valued_one_a_colour_bar(tmp_path, captured):
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(300, 3))
    values = np.stack([rng.integers(0, 3, 300), rng.integers(0, 40, 300)], 1)
    figures.latent_scatter(codes, values, ["shape", "orientation"], tmp_path / "s.png", kl=np.array([0.1, 2.0, 1.0]))
    (fig,) = captured
    shape_ax, orient_ax = fig.axes[:2]
    legend = shape_ax.get_legend()
    assert legend is not None and legend.get_title().get_text() == "shape"
    assert [t.get_text() for t in legend.get_texts()] == ["0", "1", "2"]
    # one colour per value, each the colour of its points
    colours = [tuple(np.round(h.get_facecolor()[0][:3], 3)) for h in legend.legend_handles]
    assert len(set(colours)) == 3
    assert orient_ax.get_legend() is None and len(fig.axes) == 3  # the 40-valued factor: a colour bar axis
    assert fig.axes[2].get_ylabel() == "orientation"
    # the legend sits outside the axes (never over the points)
    fig.canvas.draw()
    box, ax_box = legend.get_window_extent(), shape_ax.get_window_extent()
    assert box.x0 >= ax_box.x1
    # axis labels name the two most informative dimensions by their KL
    assert shape_ax.get_xlabel() == "z1 (KL 2.00)" and shape_ax.get_ylabel() == "z2 (KL 1.00)"


class _Linear(torch.nn.Module):
    """encode = identity-ish, decode = a fixed image per z: enough for the traversal layout."""

    latent_dim = 2

    def encode(self, x):
        return x[:, :2].clone(), torch.full((len(x), 2), 0.5)

    def decode(self, z):
        return torch.sigmoid(z.sum(-1)).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)


def test_traversal_columns_are_labelled_with_their_z_values_and_rows_use_the_given_kl(tmp_path, captured):
    x = torch.zeros(3, 4)
    figures.latent_traversals(_Linear(), x, tmp_path / "t.png", values=(-1.0, 0.0, 1.5), kl=np.array([0.25, 3.0]))
    (fig,) = captured
    axes = np.array(fig.axes).reshape(2, 3)
    assert [a.get_title() for a in axes[0]] == ["-1.0", "+0.0", "+1.5"]
    assert [axes[r, 0].get_ylabel() for r in range(2)] == ["z1 KL=3.00", "z0 KL=0.25"]  # sorted by the given KL


def test_training_curves_clip_the_transient_and_state_final_values(tmp_path, captured):
    steps = np.arange(1, 101)
    loss = 20.0 + 500.0 * np.exp(-steps / 3.0)  # a start-up spike 25 times the final value
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"step": int(s), "loss": float(v), "rate": 2.0,
                                                          "distortion": float(v) - 2.0}) + "\n"
                                              for s, v in zip(steps, loss)))
    figures.training_curves(tmp_path / "m.jsonl", tmp_path / "c.png")
    (fig,) = captured
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    tail = loss[10:]
    assert lo <= tail.min() and hi >= tail.max() and hi < 40.0  # the tail fills the panel; the spike runs off
    assert f"final {loss[-1]:.4g} at step 100" in ax.get_title()


@pytest.mark.parametrize("khat, flagged", [([0.1, 0.3, 0.69], False), ([0.1, 0.3, 0.75], True)])
def test_khat_histogram_flags_unreliable_estimates(tmp_path, captured, khat, flagged):
    figures.pareto_khat_histogram(np.array(khat), tmp_path / "k.png", num_samples=100)
    (fig,) = captured
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    assert ("UNRELIABLE: k-hat >= 0.7 for 33% of examples" in title) == flagged


def test_a_named_representation_site_labels_every_plot_the_same_way(tmp_path, captured):
    pair = _Linear()
    pair.code_name = "z1"
    figures.latent_traversals(pair, torch.zeros(3, 4), tmp_path / "t.png", values=(0.0, 1.0), kl=np.array([0.5, 1.0]))
    figures.kl_bars(np.array([0.5, 1.0]), tmp_path / "k.png", code_name="z1")
    figures.latent_scatter(np.random.default_rng(0).normal(size=(20, 2)), None, [], tmp_path / "s.png",
                           kl=np.array([0.5, 1.0]), code_name="z1")
    trav, bars, scatter = captured
    assert [a.get_ylabel() for a in np.array(trav.axes).reshape(2, 2)[:, 0]] == ["z1[1] KL=1.00", "z1[0] KL=0.50"]
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == ["z1[0]", "z1[1]"]
    assert scatter.axes[0].get_xlabel() == "z1[1] (KL 1.00)"
