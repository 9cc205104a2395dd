// node --test tests/js : the live chart's logic, without a browser.
import { test } from "node:test";
import assert from "node:assert/strict";
import { addChunk, caption, emptyChart, layout, renderSvg } from "../../web/js/pafu_chart.js";

const msg = (chunk, frameEnd, kvBytes) => ({ chunk, frame_end: frameEnd, total_frames: 12, kv_bytes: kvBytes,
  chunk_ms: 10 + chunk, tokens: 100, policy: "pafu" });

test("one point per finished chunk, a new run restarts the chart", () => {
  let s = emptyChart();
  for (let c = 0; c < 4; c++) s = addChunk(s, msg(c, 3 * (c + 1), 2 ** 20 * (c + 1)));
  assert.equal(s.points.length, 4);
  assert.equal((renderSvg(s).match(/class="pafu-point"/g) || []).length, 4);
  s = addChunk(s, msg(0, 3, 2 ** 20));
  assert.equal(s.points.length, 1);
});

test("layout maps the last frame to the right edge and the peak near the top", () => {
  let s = emptyChart();
  s = addChunk(s, msg(0, 6, 2 ** 20));
  s = addChunk(s, msg(1, 12, 2 * 2 ** 20));
  const pts = layout(s, 100, 50, 0);
  assert.equal(pts[1].x, 100);
  assert.ok(pts[1].y < pts[0].y);
  assert.ok(Math.abs(pts[1].y - 50 * (1 - 1 / 1.1)) < 1e-9);
});

test("caption reports progress and memory", () => {
  assert.match(caption(emptyChart()), /waiting/);
  const s = addChunk(emptyChart(), msg(0, 3, 3 * 2 ** 20));
  assert.equal(caption(s), "pafu: chunk 1, frame 3/12, K/V 3.00 MiB, 100 tokens/layer, 10 ms");
});
