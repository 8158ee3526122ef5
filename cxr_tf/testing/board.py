"""A run's TensorBoard logs as TensorBoard's own server reads them: its event multiplexer, data
provider and the Custom Scalars, PR curves and HParams plugins, so a test checks what a
browser would be sent without a browser.

    board = Board("runs/demo/logs")
    board.layout()["category"][0]["title"]            # "AUC"
    board.experiment().metric_infos[0].name.tag        # "val/auc_mean"
"""

import json

import numpy as np
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar import custom_scalars_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment
from tensorboard.plugins.pr_curve import pr_curves_plugin

_EXPERIMENT = ""  # one logdir, served as TensorBoard serves it: the default experiment


class Board:
    """Everything under `logdir` (every run), loaded once."""

    def __init__(self, logdir):
        # 0: keep every point (the server samples; a test wants them all).
        multiplexer = plugin_event_multiplexer.EventMultiplexer(
            size_guidance={"tensors": 0, "scalars": 0, "images": 0})
        multiplexer.AddRunsFromDirectory(str(logdir))
        multiplexer.Reload()
        self.provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
        self.tb_context = base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer,
                                                data_provider=self.provider)
        self.request = context.RequestContext()

    def layout(self):
        """The merged Custom Scalars layout, as the dashboard is sent it (a dict; {} if none)."""
        plugin = custom_scalars_plugin.CustomScalarsPlugin(self.tb_context)
        layout = plugin.layout_impl(self.request, _EXPERIMENT)
        return json.loads(layout) if isinstance(layout, str) else layout

    def experiment(self):
        """The HParams experiment (api_pb2.Experiment): its hparams and metric columns."""
        return get_experiment.Handler(self.request, backend_context.Context(self.tb_context),
                                      _EXPERIMENT, api_pb2.GetExperimentRequest()).run()

    def pr_curves(self):
        """{run: {tag: {"display_name", "steps": [step, ...]}}} of the PR curves."""
        plugin = pr_curves_plugin.PrCurvesPlugin(self.tb_context)
        found = {}
        for run, tags in plugin.tags_impl(self.request, _EXPERIMENT).items():
            for tag, info in tags.items():
                entries = plugin.pr_curves_impl(self.request, _EXPERIMENT, [run], tag)[run]
                found.setdefault(run, {})[tag] = {"display_name": info["displayName"],
                                                  "steps": [e["step"] for e in entries]}
        return found

    def scalars(self):
        """{run: {tag: {step: value}}} of every scalar of every run."""
        listing = self.provider.list_scalars(self.request, experiment_id=_EXPERIMENT,
                                             plugin_name="scalars")
        data = self.provider.read_scalars(self.request, experiment_id=_EXPERIMENT,
                                          plugin_name="scalars", downsample=10**6,
                                          run_tag_filter=None) if listing else {}
        return {run: {tag: {d.step: d.value for d in points} for tag, points in tags.items()}
                for run, tags in data.items()}

    def descriptions(self, plugin_name):
        """{run: {tag: description}} of one plugin's summaries (e.g. "images", "scalars")."""
        if plugin_name == "images":
            listing = self.provider.list_blob_sequences(
                self.request, experiment_id=_EXPERIMENT, plugin_name=plugin_name)
        else:
            listing = self.provider.list_tensors(
                self.request, experiment_id=_EXPERIMENT, plugin_name=plugin_name)
        return {run: {tag: series.description for tag, series in tags.items()}
                for run, tags in listing.items()}

    def texts(self):
        """{run: {tag: {step: markdown}}} of the text summaries."""
        data = self.provider.read_tensors(self.request, experiment_id=_EXPERIMENT,
                                          plugin_name="text", downsample=10**6,
                                          run_tag_filter=None)
        return {run: {tag: {d.step: _text(d.numpy) for d in points}
                      for tag, points in tags.items()}
                for run, tags in data.items()}


def _text(array):
    value = np.asarray(array).reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)
