"""The paper's wireless link model: log-distance path loss -> SNR -> 802.11g PHY rate -> goodput.

All powers in dBm / dB, distances in metres, rates in Mb/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# 802.11g OFDM rates (Mb/s) and the minimum SNR (dB) each needs for ~10 % PER on 1000-byte frames
# (typical receiver-sensitivity figures; IEEE 802.11-2016 Table 17-18 gives the sensitivities).
RATE_TABLE_80211G: tuple[tuple[float, float], ...] = (
    (6.0, 4.0), (9.0, 5.0), (12.0, 7.0), (18.0, 9.0), (24.0, 12.0), (36.0, 16.0), (48.0, 20.0), (54.0, 21.0),
)


@dataclass(frozen=True)
class WirelessModel:
    """Log-distance path loss PL(d) = PL(d0) + 10 n log10(d / d0) with n = 4.5 (the paper's exponent).

    Received SNR = tx power + antenna gains - PL(d) - shadowing - noise floor. Goodput is the 802.11g
    PHY rate times ``mac_efficiency`` (DCF overhead: 54 Mb/s PHY carries about 30 Mb/s of payload).
    """

    path_loss_exponent: float = 4.5
    reference_loss_db: float = 40.0  # free-space loss at d0 = 1 m, 2.4 GHz
    reference_distance_m: float = 1.0
    tx_power_dbm: float = 23.0
    antenna_gain_db: float = 12.0  # both ends together
    noise_floor_dbm: float = -100.0
    mac_efficiency: float = 0.55
    shadowing_sigma_db: float = 2.0

    def path_loss_db(self, distance_m: np.ndarray) -> np.ndarray:
        d = np.maximum(np.asarray(distance_m, dtype=float), self.reference_distance_m)
        return self.reference_loss_db + 10.0 * self.path_loss_exponent * np.log10(d / self.reference_distance_m)

    def snr_db(self, distance_m: np.ndarray, shadowing_db: np.ndarray | float = 0.0) -> np.ndarray:
        rx = self.tx_power_dbm + self.antenna_gain_db - self.path_loss_db(distance_m) - shadowing_db
        return rx - self.noise_floor_dbm

    @staticmethod
    def phy_rate_mbps(snr_db: np.ndarray) -> np.ndarray:
        """Highest 802.11g rate whose SNR threshold is met (0 when even 6 Mb/s is out of reach)."""
        snr = np.asarray(snr_db, dtype=float)
        rate = np.zeros_like(snr)
        for r, thr in RATE_TABLE_80211G:
            rate = np.where(snr >= thr, r, rate)
        return rate

    @staticmethod
    def rate_threshold_db(rate_mbps: np.ndarray) -> np.ndarray:
        rate = np.asarray(rate_mbps, dtype=float)
        thr = np.full_like(rate, np.inf)
        for r, t in RATE_TABLE_80211G:
            thr = np.where(rate == r, t, thr)
        return thr

    def goodput_mbps(self, snr_db: np.ndarray) -> np.ndarray:
        return self.phy_rate_mbps(snr_db) * self.mac_efficiency

    def frame_error_rate(self, snr_db: np.ndarray) -> np.ndarray:
        """Residual frame error rate after rate adaptation: 20 % at the threshold, falling 10x per 3.5 dB.

        An exponential-in-margin approximation of the OFDM PER curves; links out of range lose
        everything.
        """
        snr = np.asarray(snr_db, dtype=float)
        margin = snr - self.rate_threshold_db(self.phy_rate_mbps(snr))
        fer = 0.2 * np.power(10.0, -np.maximum(margin, 0.0) / 3.5)
        return np.where(np.isfinite(margin), fer, 1.0)
