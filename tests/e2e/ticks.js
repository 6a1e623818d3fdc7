// A node component: 40 ticks 50 ms apart, each with a running SHA-256, then exit 0.
const h = require("crypto").createHash("sha256");
let i = 0;
const t = setInterval(() => {
	h.update(String(i));
	console.log("tick", i++, h.copy().digest("hex").slice(0, 16));
	if (i === 40) {
		clearInterval(t);
		console.log("done");
	}
}, 50);
