// PaFu-KV web extension: a live view of the KV cache on every PaFu AR Chunk Sampler node.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { EVENT, addChunk, caption, emptyChart, renderSvg } from "./pafu_chart.js";

const SAMPLER = "PaFuARChunkSampler";
const views = new Map(); // node id (string) -> { state, element }

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
    const view = { state: emptyChart(), element };
    views.set(String(node.id), view);
    render(view);
    node.addDOMWidget("pafu_live_cache", "pafu-live", element, { serialize: false, hideOnZoom: false });
    const onRemoved = node.onRemoved;
    node.onRemoved = function () {
      views.delete(String(node.id));
      return onRemoved?.apply(this, arguments);
    };
  },
  async setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const view = views.get(String(detail.node));
      if (!view) return;
      view.state = addChunk(view.state, detail);
      render(view);
    });
  },
});
