"""
A headless Chromium for the dashboard's end-to-end tests: Debian's
C{/usr/bin/chromium} driven through C{/usr/bin/chromedriver} with Selenium,
a fresh profile in the test's temp directory, quit in C{addCleanup}.

A missing browser or driver fails the test (never skips): C{make test}
installs them (the Makefile's system-deps).
"""

import os
import shutil

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def start_browser(testcase, width: int = 1280, height: int = 900):
    """
    A new headless Chromium for C{testcase}, quit when the test ends.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.access(program, os.X_OK):
            testcase.fail(f"{program} is missing: install Debian's chromium and chromium-driver (make system-deps)")
    profile = os.path.abspath(testcase.mktemp())
    os.makedirs(profile)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    testcase.addCleanup(shutil.rmtree, profile, True)
    testcase.addCleanup(driver.quit)
    driver.set_page_load_timeout(20)
    return driver


def full_page_screenshot(driver, path: str, width: int) -> None:
    """
    Save the whole page at C{width} CSS pixels wide as a PNG at C{path}.
    """
    driver.set_window_size(width, 900)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500,
    })
    try:
        # The charts follow their boxes' widths on resize.
        driver.execute_script("window.dispatchEvent(new Event('resize'))")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500,
        })
        driver.save_screenshot(path)
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
