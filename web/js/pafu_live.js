// PaFu-KV web extension: a live view of the KV cache on every PaFu AR Chunk Sampler node.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { EVENT, addChunk, caption, emptyChart, renderSvg } from "./pafu_chart.js";

const SAMPLER = "PaFuARChunkSampler";

function render(view) {
  view.element.querySelector(".pafu-chart").innerHTML = renderSvg(view.state);
  view.element.querySelector(".pafu-caption").textContent = caption(view.state);
}

app.registerExtension({
  name: "PaFuKV.LiveCache",
  async nodeCreated(node) {
    if (node.comfyClass !== SAMPLER) return;
    const element = document.createElement("div");
    element.className = "pafu-live";
    element.style.cssText = "font: 11px sans-serif; color: #ccc; padding: 2px;";
    element.innerHTML = '<div class="pafu-chart"></div><div class="pafu-caption"></div>';
    // the view lives on the node: its id is only assigned once the node joins a graph
    node.pafuView = { state: emptyChart(), element };
    render(node.pafuView);
    node.addDOMWidget("pafu_live_cache", "pafu-live", element, { serialize: false, hideOnZoom: false });
  },
  async setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const node = app.graph?.getNodeById(Number(detail.node)) ?? app.graph?.getNodeById(detail.node);
      const view = node?.pafuView;
      if (!view) return;
      view.element.dataset.nodeId = String(node.id);
      view.state = addChunk(view.state, detail);
      render(view);
    });
  },
});
