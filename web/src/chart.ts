/**
 * Two plain SVG charts: a step line (a running total over time) and grouped bars (counts per hour). Each
 * is an image with a text alternative; the pages also show the figures as a table.
 * @module
 */
const SVG = "http://www.w3.org/2000/svg";
const W = 600;
const H = 200;
const PAD = 28;

function svg(label: string): SVGSVGElement {
  const el = document.createElementNS(SVG, "svg");
  el.setAttribute("viewBox", `0 0 ${W} ${H}`);
  el.setAttribute("class", "chart");
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", label);
  return el;
}

function node(tag: string, attrs: Record<string, string | number>): SVGElement {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** A step line of `values` in order, with the zero line; `label` describes it. */
export function stepChart(values: number[], label: string): SVGSVGElement {
  const el = svg(label);
  const all = [0, ...values];
  const min = Math.min(...all);
  const max = Math.max(...all, min + 1);
  const y = (v: number) => H - PAD - ((v - min) / (max - min)) * (H - 2 * PAD);
  const x = (i: number) => PAD + (i / Math.max(values.length, 1)) * (W - 2 * PAD);
  el.append(
    node("line", { x1: PAD, x2: W - PAD, y1: y(0), y2: y(0), stroke: "#6b6b6b", "stroke-dasharray": "4 4" }),
  );
  let d = `M ${x(0)} ${y(0)}`;
  values.forEach((v, i) => (d += ` H ${x(i)} V ${y(v)}`));
  d += ` H ${x(values.length)}`;
  el.append(node("path", { d, fill: "none", stroke: "#1d4ed8", "stroke-width": 3 }));
  return el;
}

/** Bars per slot for each series (at most a few), side by side. */
export function barChart(
  slots: number[][],
  colours: string[],
  label: string,
): SVGSVGElement {
  const el = svg(label);
  const max = Math.max(1, ...slots.flat());
  const slot = (W - 2 * PAD) / Math.max(slots.length, 1);
  const bar = (slot * 0.8) / Math.max(colours.length, 1);
  el.append(node("line", { x1: PAD, x2: W - PAD, y1: H - PAD, y2: H - PAD, stroke: "#6b6b6b" }));
  slots.forEach((values, i) =>
    values.forEach((v, s) => {
      const height = (v / max) * (H - 2 * PAD);
      el.append(node("rect", {
        x: PAD + i * slot + s * bar,
        y: H - PAD - height,
        width: Math.max(bar - 1, 1),
        height,
        fill: colours[s],
      }));
    })
  );
  const top = node("text", { x: 4, y: PAD - 8, "font-size": 14, fill: "#1a1a1a" });
  top.textContent = `max ${max}`;
  el.append(top);
  return el;
}
