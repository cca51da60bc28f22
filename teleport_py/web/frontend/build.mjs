// Bundles src/ into dist/: assets/app-<hash>.js and .css, and index.html
// naming them; assets/invite-<hash>.js, the invitation page's QR code (the
// proxy finds it by its name). Run by `npm run build` (setup.py runs `npm ci && npm run build`).
import * as esbuild from "esbuild";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename } from "node:path";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist/assets", { recursive: true });
const result = await esbuild.build({
  entryPoints: { app: "src/main.js", invite: "src/invite.js" },
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  outdir: "dist/assets",
  entryNames: "[name]-[hash]",
  metafile: true,
  legalComments: "linked",
  logLevel: "warning",
});
const outputs = Object.keys(result.metafile.outputs).map((path) => basename(path));
const script = outputs.find((name) => name.startsWith("app-") && name.endsWith(".js"));
const style = outputs.find((name) => name.startsWith("app-") && name.endsWith(".css"));
const page = readFileSync("src/index.html", "utf8")
  .replace("%SCRIPT%", `/web/assets/${script}`)
  .replace("%STYLE%", `/web/assets/${style}`);
writeFileSync("dist/index.html", page);
console.log(`built dist/index.html, ${outputs.filter((name) => !name.endsWith(".txt")).join(", ")}`);
