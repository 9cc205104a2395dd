// PaFu-KV web extension: a live view of the KV cache on every PaFu sampler and cache-patch node.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { EVENT, addChunk, caption, emptyChart, renderSvg } from "./pafu_chart.js";

const NODES = new Set(["PaFuARChunkSampler", "PaFuKVCachePatch"]);
const HEIGHT = 118;          // chart + two caption lines: the widget claims exactly this much of its node

function render(view) {
  view.element.querySelector(".pafu-chart").innerHTML = renderSvg(view.state);
  view.element.querySelector(".pafu-caption").textContent = caption(view.state);
}

app.registerExtension({
  name: "PaFuKV.LiveCache",
  async nodeCreated(node) {
    if (!NODES.has(node.comfyClass)) return;
    const element = document.createElement("div");
    element.className = "pafu-live";
    // everything stays inside the widget's box (the frontend sizes the node around it)
    element.style.cssText = `font: 11px sans-serif; color: #ccc; padding: 2px; box-sizing: border-box;
      height: ${HEIGHT}px; overflow: hidden; display: flex; flex-direction: column;`;
    element.innerHTML = '<div class="pafu-chart" style="flex: 1 1 auto; min-height: 0;"></div>' +
      '<div class="pafu-caption" style="flex: 0 0 auto; line-height: 13px; max-height: 26px; overflow: hidden;"></div>';
    // the view lives on the node: its id is only assigned once the node joins a graph
    node.pafuView = { state: emptyChart(), element };
    render(node.pafuView);
    node.addDOMWidget("pafu_live_cache", "pafu-live", element, {
      serialize: false, hideOnZoom: false, getMinHeight: () => HEIGHT, getMaxHeight: () => HEIGHT,
      getHeight: () => HEIGHT,
    });
    const [w, h] = node.computeSize();
    node.setSize([Math.max(node.size[0], w, 300), Math.max(node.size[1], h)]);
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
