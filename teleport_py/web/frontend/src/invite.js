// The invitation page (served by the proxy, docs/web-ui.md): shows the OTP
// device's otpauth:// URI as a QR code an authenticator app scans. The page
// is plain HTML that works without this script (the secret is shown as text);
// this draws the code as SVG from the element's data-uri, with the qrcode
// package's own renderer, parsed as SVG (no innerHTML, no inline script).
import QRCode from "qrcode";

const SIZE = 200; // CSS pixels: a code of up to 50 modules (its margin included) keeps 4 px ones

async function drawQr(holder) {
  const uri = holder.dataset.uri;
  if (!uri) return;
  const markup = await QRCode.toString(uri, { type: "svg", errorCorrectionLevel: "M", margin: 4 });
  const svg = new DOMParser().parseFromString(markup, "image/svg+xml").documentElement;
  if (svg.namespaceURI !== "http://www.w3.org/2000/svg") throw new Error("the QR code did not render as SVG");
  svg.setAttribute("width", String(SIZE));
  svg.setAttribute("height", String(SIZE));
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "QR code of the otpauth:// URI above, for an authenticator app");
  holder.replaceChildren(document.importNode(svg, true));
  holder.dataset.rendered = "svg";
}

const holder = document.getElementById("otp-qr");
if (holder) {
  drawQr(holder).catch((e) => {
    holder.textContent = `The QR code could not be drawn (${e.message}); enter the secret by hand.`;
  });
}
