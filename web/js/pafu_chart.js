// Live cache chart: pure functions (no ComfyUI imports) so node's test runner can check them.

export const EVENT = "pafu.cache";

/** A fresh chart state for one sampler node. */
export function emptyChart() {
  return { points: [], totalFrames: 0, policy: "" };
}

/** Add one finished chunk (a "pafu.cache" message); a chunk 0 starts a new run. */
export function addChunk(state, msg) {
  const points = msg.chunk === 0 ? [] : state.points.slice();
  points.push({
    chunk: msg.chunk,
    frame: msg.frame_end,
    mib: msg.kv_bytes / 2 ** 20,
    ms: msg.chunk_ms,
    tokens: msg.tokens,
  });
  return { points, totalFrames: msg.total_frames, policy: msg.policy };
}

/** Map points to SVG coordinates: x by frame over the whole video, y by K/V MiB. */
export function layout(state, width, height, pad = 6) {
  const maxFrame = Math.max(1, state.totalFrames, ...state.points.map((p) => p.frame));
  const maxMib = Math.max(1e-9, ...state.points.map((p) => p.mib)) * 1.1;
  return state.points.map((p) => ({
    x: pad + ((width - 2 * pad) * p.frame) / maxFrame,
    y: height - pad - ((height - 2 * pad) * p.mib) / maxMib,
    ...p,
  }));
}

/** One-line caption under the chart. */
export function caption(state) {
  const last = state.points[state.points.length - 1];
  if (!last) return "PaFu cache: waiting for the first chunk";
  return `${state.policy}: chunk ${last.chunk + 1}, frame ${last.frame}/${state.totalFrames}, ` +
    `K/V ${last.mib.toFixed(2)} MiB, ${last.tokens} tokens/layer, ${last.ms.toFixed(0)} ms`;
}

/** SVG markup: a polyline and one circle per finished chunk. */
export function renderSvg(state, width = 280, height = 90) {
  const pts = layout(state, width, height);
  const line = pts.map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
  const dots = pts.map((p) => `<circle class="pafu-point" cx="${p.x.toFixed(1)}" cy="${p.y.toFixed(1)}" r="2.5"></circle>`).join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="100%" height="100%" viewBox="0 0 ${width} ${height}" ` +
    `preserveAspectRatio="none">` +
    `<rect width="${width}" height="${height}" fill="#1b1b1b"></rect>` +
    `<polyline points="${line}" fill="none" stroke="#f39c12" stroke-width="1.5"></polyline>` +
    `<g fill="#f39c12">${dots}</g></svg>`;
}
